"""Trainer: one step learns, exact resume, accumulation invariance, reference modes, LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from hybridrl.core.logging import read_metrics
from hybridrl.core.session import Interrupted, RunDirectoryError, Session
from hybridrl.preference.data import tokenize_pairs
from hybridrl.preference.losses import PreferenceLossConfig
from hybridrl.preference.models import load_causal_lm, load_tokenizer
from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig


@pytest.fixture(scope="module")
def pairs_and_tokenizer(tiny_lm, text_rows):
    tokenizer = load_tokenizer(tiny_lm[0])
    return tokenize_pairs(text_rows, tokenizer)[0], tokenizer


def make_trainer(tiny_lm, pairs_and_tokenizer, out_dir, ref_model=None, **overrides):
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
        ref_model=ref_model,
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
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    # saved merged: a plain model whose weights moved from the initial ones, no adapter files
    assert not (tmp_path / "model" / "adapter_config.json").exists()
    merged, initial = load_causal_lm(tmp_path / "model"), load_causal_lm(tiny_lm[0])
    assert not any("lora_" in name for name in merged.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), initial.state_dict().values(),
                                                      strict=True))
    adapter_only = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "adapter", steps=2, lora_r=4, merge_lora=False)
    adapter_only.train()
    assert (tmp_path / "adapter" / "model" / "adapter_config.json").exists()


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


def untimed(rows):
    """Metric lines without their wall-clock columns (those differ between any two runs)."""
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_rerun_with_other_settings_is_refused(tiny_lm, pairs_and_tokenizer, tmp_path):
    make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path).train(stop_at=3)
    with pytest.raises(RunDirectoryError, match=r"differs in train\.learning_rate\)"):
        make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path, learning_rate=0.5).train()
    # how often it logs and saves, and where it runs, may change between reruns
    resumed = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path, log_every=2, save_every=4)
    resumed.train()
    assert resumed.step == 6 and resumed.optimizer.param_groups[0]["initial_lr"] == 1e-3


def test_resumed_metrics_equal_an_uninterrupted_runs(tiny_lm, pairs_and_tokenizer, tmp_path):
    settings = dict(log_every=2, save_every=3)  # the checkpoint at step 3 falls inside a log window
    straight = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "straight", **settings)
    straight.train()
    killed = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "resumed", **settings)
    real_step = killed.train_step

    def step_then_die():
        if killed.step == 4:  # after the line of step 4, past the checkpoint of step 3
            raise KeyboardInterrupt
        return real_step()

    killed.train_step = step_then_die
    with pytest.raises((KeyboardInterrupt, Interrupted)) as caught:  # a bare KeyboardInterrupt would end pytest
        killed.train()
    assert caught.type is Interrupted and "progress up to step 3 is saved" in str(caught.value)
    assert [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")] == [2, 4]
    make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "resumed", **settings).train()
    rows = [read_metrics(tmp_path / run / "metrics.jsonl") for run in ("straight", "resumed")]
    assert [r["step"] for r in rows[1]] == [2, 4, 6]
    assert untimed(rows[1]) == untimed(rows[0])


def test_final_metrics_survive_a_kill_after_the_last_checkpoint(tiny_lm, pairs_and_tokenizer, tmp_path):
    killed = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path)

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    killed.save_model = die  # killed after the last checkpoint, before the model and results are written
    with pytest.raises((KeyboardInterrupt, Interrupted)):
        killed.train()
    assert not (tmp_path / "results.json").exists()
    last = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path).train()
    for key in ("loss", "rewards/accuracies", "time/tokens_per_s", "lr"):
        assert key in last
    assert json.loads((tmp_path / "results.json").read_text()) == last
    assert (tmp_path / "model" / "config.json").exists()
    again = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path)
    assert again.train() == last and again.step == 6  # a finished run is not rerun, its metrics come back


def test_a_second_process_on_the_run_directory_is_refused(tiny_lm, pairs_and_tokenizer, tmp_path):
    trainer = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path)
    holder = Session(tmp_path, trainer.run_record(), total=6, progress=False)
    try:
        with pytest.raises(RunDirectoryError, match=f"in use by process {__import__('os').getpid()}"):
            trainer.train()
    finally:
        holder.release()
    assert trainer.train()["loss"] > 0 and trainer.step == 6


@pytest.mark.parametrize("reference", ["copy", "explicit", "explicit-precompute"])
def test_reference_model_is_bitwise_unchanged_by_training(reference, tiny_lm, pairs_and_tokenizer, tmp_path):
    ref_model = None if reference == "copy" else load_causal_lm(tiny_lm[1])
    mode = "precompute" if reference.endswith("precompute") else "model"
    trainer = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path, ref_model=ref_model, reference=mode, steps=3)
    frozen = trainer.ref_model if ref_model is None else ref_model
    before = {k: v.detach().clone() for k, v in frozen.state_dict().items()}
    policy_before = weights(trainer)
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    if ref_model is not None:
        pristine = load_causal_lm(tiny_lm[1]).state_dict()
        assert all(torch.equal(pristine[k], v) for k, v in ref_model.state_dict().items())
    else:
        pristine = load_causal_lm(tiny_lm[0]).state_dict()
        assert all(torch.equal(pristine[k], v) for k, v in frozen.state_dict().items())
    assert any(not torch.equal(policy_before[k], v) for k, v in weights(trainer).items())


def test_no_resume_starts_over(tiny_lm, pairs_and_tokenizer, tmp_path):
    first = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path).train()
    again = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path)
    last = again.train(resume=False)  # trains again from step 0 instead of returning the finished results
    assert again.step == 6 and [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert {k: v for k, v in last.items() if not k.startswith("time/")} == {
        k: v for k, v in first.items() if not k.startswith("time/")
    }


def test_cosine_schedule_matches_transformers(tiny_lm, pairs_and_tokenizer, tmp_path):
    from transformers import get_cosine_schedule_with_warmup

    trainer = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path, steps=10, warmup_steps=3, lr_schedule="cosine")
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1.0), 3, 10)
    assert [trainer._lr_factor(s) for s in range(11)] == pytest.approx(
        [reference.lr_lambdas[0](s) for s in range(11)], abs=1e-12
    )


def test_gradient_checkpointing_leaves_the_steps_unchanged(tiny_lm, pairs_and_tokenizer, tmp_path):
    plain = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "plain", steps=2)
    checkpointed = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "ckpt", steps=2, gradient_checkpointing=True)
    model = checkpointed.accelerator.unwrap_model(checkpointed.model)
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    losses = []
    for trainer in (plain, checkpointed):
        trainer.prepare_reference()
        losses.append([trainer.train_step()[0]["loss"].item() for _ in range(2)])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    a, b = weights(plain), weights(checkpointed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_eval_pairs_are_scored_against_the_reference_and_logged(tiny_lm, pairs_and_tokenizer, tmp_path):
    pairs = pairs_and_tokenizer[0]
    trainer = make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path / "run", steps=4, eval_every=2)
    trainer.eval_pairs = pairs
    trainer.prepare_reference()
    assert trainer.evaluate()["eval/loss"] == pytest.approx(0.6931472, abs=1e-5)  # policy == reference
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    evaluated = [row for row in rows if "eval/loss" in row]
    assert [row["step"] for row in evaluated] == [2, 4]
    # Trained on these very pairs, the policy prefers their chosen answers more than the reference did.
    assert evaluated[-1]["eval/loss"] < 0.69 and evaluated[-1]["eval/rewards/margins"] > 0
    # Scoring the training pairs as eval pairs gives what a no-gradient loss on them gives.
    trainer.model.eval()
    loss, _ = trainer.compute_loss(trainer.collate(list(range(len(pairs)))).to(trainer.device))
    assert trainer.evaluate()["eval/loss"] == pytest.approx(loss.item(), abs=1e-5)


def test_metric_lines_reach_wandb_under_one_run_id_across_resumes(tiny_lm, pairs_and_tokenizer, tmp_path,
                                                                  monkeypatch):
    import sys
    import types

    calls = []

    class FakeRun:
        def log(self, row, step):
            calls.append(("log", step, row))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs["id"], kwargs["resume"]))
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path, steps=4, save_every=2, report_to=("wandb",)).train(stop_at=2)
    make_trainer(tiny_lm, pairs_and_tokenizer, tmp_path, steps=4, save_every=2, report_to=("wandb",)).train()
    inits = [c for c in calls if c[0] == "init"]
    assert len(inits) == 2 and inits[0][1] == inits[1][1] and inits[0][2] == "allow"
    assert [c[1] for c in calls if c[0] == "log"] == [1, 2, 3, 4]
    assert "loss" in next(c[2] for c in calls if c[0] == "log")
    with pytest.raises(ValueError, match="unknown report_to"):
        TrainConfig(report_to=("mlflow",))
