"""Padding and ancestral sampling: the one implementation of each draws what generate() draws."""

from __future__ import annotations

import pytest
import torch

from hybridrl.preference.models import load_causal_lm, load_tokenizer
from hybridrl.preference.sampling import sample, sample_completions
from hybridrl.preference.tokens import pad


def test_pad_left_and_right():
    ids, mask = pad([[1, 2, 3], [4]], 0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad([[1, 2, 3], [4], []], 9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4], [9, 9, 9]] and mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


@pytest.fixture(scope="module")
def lm(tiny_lm):
    tokenizer = load_tokenizer(tiny_lm[0])
    # prompts of different lengths, so that the batch is left-padded
    texts = [
        "write two words about animals and tools using saw :",
        "about colors and foods using rice :",
        "foods using plum :",
        "write seven words about places and animals using owl :",
    ]
    return load_causal_lm(tiny_lm[0]), tokenizer, tokenizer(texts * 2)["input_ids"]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_draws_what_generate_draws(lm, temperature, one_torch_thread):
    model, tokenizer, prompt_ids = lm
    ids, mask = pad(prompt_ids, tokenizer.pad_token_id, side="left")
    saved = torch.random.get_rng_state()
    torch.manual_seed(11)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    torch.random.set_rng_state(saved)
    drawn = sample(
        model,
        prompt_ids,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=8,
        temperature=temperature,
        generator=torch.Generator().manual_seed(11),
        entropy=True,
    )
    new = out.sequences[:, ids.size(1) :]
    width = new.size(1)
    assert [row + [tokenizer.pad_token_id] * (width - len(row)) for row in drawn.completions] == new.tolist()
    assert all(row[:-1].count(tokenizer.eos_token_id) == 0 for row in drawn.completions)  # cut at the first EOS
    log_probs = torch.stack(out.scores, dim=1).float().log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1)
    counted = torch.tensor([[t < len(row) for t in range(width)] for row in drawn.completions])
    assert drawn.num_tokens == int(counted.sum())
    assert drawn.mean_entropy == pytest.approx(float((entropy * counted).sum()) / int(counted.sum()), rel=1e-6)


def test_sampling_leaves_the_global_rng_alone_and_batches_in_order(lm):
    model, tokenizer, prompt_ids = lm
    kwargs = dict(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=5, temperature=1.0
    )
    state = torch.random.get_rng_state()
    first = sample_completions(model, prompt_ids, generator=torch.Generator().manual_seed(2), batch_size=3, **kwargs)
    assert torch.equal(state, torch.random.get_rng_state())
    again = sample_completions(model, prompt_ids, generator=torch.Generator().manual_seed(2), batch_size=3, **kwargs)
    assert first == again and len(first) == len(prompt_ids)
