"""Fixtures: a tiny Llama and word-level tokenizer built locally (no Hub), and small preference rows."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module on one torch thread, restoring the count afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(n: int, seed: int) -> list[dict]:
    from hybridrl.preference.task import TaskPrompt, all_prompts, teacher_response

    rng = random.Random(seed)
    prompts = rng.sample(all_prompts(), n)
    rows = []
    for prompt in prompts:
        chosen, rejected = teacher_response(prompt, rng), teacher_response(prompt, rng)
        while rejected == chosen:
            rejected = teacher_response(prompt, rng)
        assert TaskPrompt.parse(prompt.text) == prompt
        rows.append({"prompt": prompt.text, "chosen": chosen, "rejected": rejected})
    return rows


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """(policy_dir, reference_dir): two tiny Llamas with different seeds and one shared tokenizer."""
    from hybridrl.preference.models import (
        TinyLMConfig,
        build_tiny_model,
        save_model_dir,
        train_word_tokenizer,
    )
    from hybridrl.preference.task import task_vocabulary_text

    root = tmp_path_factory.mktemp("tiny_lm")
    tokenizer = train_word_tokenizer(task_vocabulary_text())
    config = TinyLMConfig(hidden_size=32, intermediate_size=64, initializer_range=0.08)
    policy = save_model_dir(build_tiny_model(tokenizer, config, seed=1), tokenizer, root / "policy")
    reference = save_model_dir(build_tiny_model(tokenizer, config, seed=2), tokenizer, root / "reference")
    return policy, reference


@pytest.fixture(scope="session")
def text_rows():
    return _rows(24, seed=0)


@pytest.fixture(scope="session")
def chat_rows(text_rows):
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
            "rejected": [{"role": "assistant", "content": r["rejected"].strip()}],
        }
        for r in text_rows
    ]
