"""Trainer: one step learns, exact resume, accumulation invariance, reference modes, LoRA."""

from __future__ import annotations

import pytest
import torch

from hybridrl.core.logging import read_metrics
from hybridrl.preference.data import tokenize_pairs
from hybridrl.preference.losses import PreferenceLossConfig
from hybridrl.preference.models import load_causal_lm, load_tokenizer
from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig


@pytest.fixture(scope="module")
def pairs_and_tokenizer(tiny_lm, text_rows):
    tokenizer = load_tokenizer(tiny_lm[0])
    return tokenize_pairs(text_rows, tokenizer)[0], tokenizer


def make_trainer(tiny_lm, pairs_and_tokenizer, out_dir, **overrides):
    pairs, tokenizer = pairs_and_tokenizer
    settings = dict(
        steps=6,
        batch_size=4,
        learning_rate=1e-3,
        log_every=1,
        save_every=3,
        device="cpu",
        progress=False,
        seed=3,
    )
    settings.update(overrides)
    return PairwiseTrainer(
        model=load_causal_lm(tiny_lm[0]),
        tokenizer=tokenizer,
        pairs=pairs,
        loss_config=PreferenceLossConfig(beta=0.5),
        train_config=TrainConfig(**settings),
        out_dir=out_dir,
    )


def weights(trainer):
    return {
        k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
    }


def test_one_step_starts_at_log2_and_updates(tiny_lm, pairs_and_tokenizer, tmp_path):
    trainer = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path, steps=1)
    before = weights(trainer)
    trainer.prepare_reference()
    metrics, tokens = trainer.train_step()
    assert metrics["loss"].item() == pytest.approx(0.6931472, abs=1e-5)  # policy == reference at step 0
    assert tokens > 0 and torch.isfinite(metrics["grad_norm"])
    after = weights(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_is_exact(tiny_lm, pairs_and_tokenizer, tmp_path):
    straight = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "straight")
    straight.train()
    interrupted = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "resumed", save_every=2)
    interrupted.train(stop_at=3)
    resumed = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "resumed")
    resumed.train()  # picks up checkpoint.pt at step 3 and reuses the cached reference log-probs
    a, b = weights(straight), weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    rows_a = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    rows_b = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows_a] == pytest.approx([r["loss"] for r in rows_b], abs=1e-6)
    assert len(list((tmp_path / "resumed").glob("ref_logps-*.pt"))) == 1
    assert (tmp_path / "resumed" / "model" / "config.json").exists()
    for key in ("rewards/margins", "rewards/accuracies", "kl/dataset_logratio", "time/tokens_per_s"):
        assert key in rows_b[-1]


def test_gradient_accumulation_matches_a_bigger_batch(tiny_lm, pairs_and_tokenizer, tmp_path):
    big = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "big", steps=2)
    small = make_trainer(
        tiny_lm, pairs_and_tokenizer, tmp_path / "small", steps=2, batch_size=2, gradient_accumulation_steps=2
    )
    for trainer in (big, small):
        trainer.prepare_reference()
        trainer.train_step()
        trainer.train_step()
    a, b = weights(big), weights(small)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_reference_model_mode_equals_precomputed(tiny_lm, pairs_and_tokenizer, tmp_path):
    losses = []
    for reference in ("precompute", "model"):
        trainer = make_trainer(
            tiny_lm, pairs_and_tokenizer, tmp_path / reference, steps=3, reference=reference
        )
        trainer.prepare_reference()
        losses.append([trainer.train_step()[0]["loss"].item() for _ in range(3)])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_lora_trains_only_the_adapter(tiny_lm, pairs_and_tokenizer, tmp_path):
    pytest.importorskip("peft")
    trainer = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path, steps=2, lora_r=4)
    trainer.train()
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert (tmp_path / "model" / "adapter_config.json").exists()


def test_empty_dataset_is_a_clear_error(tiny_lm, pairs_and_tokenizer, tmp_path):
    from hybridrl.preference.data import TokenizedPairs

    with pytest.raises(ValueError, match="no preference pairs"):
        PairwiseTrainer(
            model=load_causal_lm(tiny_lm[0]),
            tokenizer=pairs_and_tokenizer[1],
            pairs=TokenizedPairs([], [], [], []),
            loss_config=PreferenceLossConfig(),
            train_config=TrainConfig(device="cpu"),
            out_dir=tmp_path,
        )


def test_schedule_matches_transformers_linear_warmup(tiny_lm, pairs_and_tokenizer, tmp_path):
    from transformers import get_linear_schedule_with_warmup

    trainer = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path, steps=10, warmup_steps=3)
    reference = get_linear_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1.0), 3, 10)
    assert [trainer._lr_factor(s) for s in range(12)] == pytest.approx(
        [reference.lr_lambdas[0](s) for s in range(12)]
    )


def test_length_chunks_leave_loss_and_gradient_unchanged(tiny_lm, pairs_and_tokenizer, tmp_path):
    whole = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "whole", batch_size=6)
    chunked = make_trainer(
        tiny_lm, pairs_and_tokenizer, tmp_path / "chunked", batch_size=6, pairs_per_forward=2
    )
    indices = whole.micro_batch_indices(0, 0)
    chunks = chunked.length_chunks(indices)
    assert len(chunks) == 3 and sorted(i for chunk in chunks for i in chunk) == sorted(indices)
    results = []
    for trainer, groups in ((whole, [indices]), (chunked, chunks)):
        trainer.prepare_reference()
        loss, metrics = trainer.compute_loss([trainer.collate(group) for group in groups])
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters()]
        results.append((loss.item(), metrics["rewards/margins"].item(), grads))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][2], results[1][2], strict=True))
