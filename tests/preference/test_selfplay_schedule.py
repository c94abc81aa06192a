"""Self-play's learning-rate schedule and fp16 loss scaling: the rate each optimizer step takes, the
extragradient restore of both, resume, and what joins the run's record."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hybridrl.core.optim import lr_factor
from hybridrl.core.session import RunDirectoryError
from hybridrl.preference.oracles import MajorityJudge
from hybridrl.preference.selfplay import SelfPlayConfig, SelfPlayTrainer, resolve_selfplay_method
from hybridrl.preference.selfplay_spec import method_config

LR = 1e-3


def make_trainer(tiny_lm, text_rows, out_dir, method, **overrides):
    from hybridrl.preference.models import load_causal_lm, load_tokenizer

    spec = resolve_selfplay_method(method)
    settings = dict(iterations=2, samples_per_prompt=4, prompts_per_iteration=8, steps_per_iteration=3, batch_size=8,
                    learning_rate=LR, max_new_tokens=6, progress=False, device="cpu")
    settings.update(overrides)
    return SelfPlayTrainer(spec=spec, method_config=method_config(spec), config=SelfPlayConfig(**settings),
                           model=load_causal_lm(tiny_lm[0]), ref_model=load_causal_lm(tiny_lm[0]),
                           tokenizer=load_tokenizer(tiny_lm[0]), prompts=[r["prompt"] for r in text_rows],
                           judge=MajorityJudge(), out_dir=out_dir)


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def step_rates(trainer):
    """The learning rate of every optimizer step the trainer takes, in order."""
    rates = []
    trainer.optimizer.register_step_pre_hook(lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
    return rates


def metric_rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_lr_factor_by_hand():
    # 6 steps, 2 of warm-up: 0, 1/2, then linear from 1 to 0 at step 6
    assert [lr_factor(s, 6, 2, "linear") for s in range(6)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    cosine = [lr_factor(s, 4, 1, "cosine") for s in range(4)]
    assert cosine == pytest.approx([0.0, 1.0, 0.75, 0.25], abs=1e-12)
    assert [lr_factor(s, 4, 2, "constant") for s in range(4)] == [0.0, 0.5, 1.0, 1.0]


def test_linear_schedule_over_the_run_and_the_half_step_reruns_its_rates(tiny_lm, text_rows, tmp_path,
                                                                          one_torch_thread):
    """EGPO, 2 iterations of 3 kept steps: the schedule spans 6 steps (2 warm-up, ceil(0.2 * 6)); each
    half step takes the rates of the steps it prepares and is undone with the schedule's count."""
    trainer = make_trainer(tiny_lm, text_rows, tmp_path, "egpo", lr_schedule="linear", warmup_ratio=0.2)
    rates = step_rates(trainer)
    trainer.run()
    factors = [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    want = [LR * f for f in factors[:3] * 2 + factors[3:] * 2]  # (half step, kept steps) per iteration
    assert rates == pytest.approx(want, rel=1e-12, abs=0)
    assert [row["lr"] for row in metric_rows(tmp_path)] == pytest.approx([LR, 0.25 * LR], rel=1e-12)


def test_cosine_schedule_restarts_each_iteration(tiny_lm, text_rows, tmp_path, one_torch_thread):
    trainer = make_trainer(tiny_lm, text_rows, tmp_path, "sppo", steps_per_iteration=4, lr_schedule="cosine",
                           warmup_ratio=0.25, lr_schedule_span="iteration")
    rates = step_rates(trainer)
    trainer.run()
    assert rates == pytest.approx([LR * f for f in [0.0, 1.0, 0.75, 0.25] * 2], rel=1e-12, abs=1e-15)


def test_a_killed_run_with_a_schedule_resumes_to_the_same_weights_and_lines(tiny_lm, text_rows, tmp_path,
                                                                           one_torch_thread):
    settings = dict(lr_schedule="linear", warmup_ratio=0.2)
    straight = make_trainer(tiny_lm, text_rows, tmp_path / "straight", "egpo", **settings)
    straight.run()
    killed = make_trainer(tiny_lm, text_rows, tmp_path / "killed", "egpo", **settings)
    real_update = killed.update

    def update_then_die(*args, iteration, phase):
        if iteration == 1 and phase == 1:
            raise KeyboardInterrupt
        return real_update(*args, iteration=iteration, phase=phase)

    killed.update = update_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    resumed = make_trainer(tiny_lm, text_rows, tmp_path / "killed", "egpo", **settings)
    rates = step_rates(resumed)
    resumed.run()
    # iteration 1's opponents were persisted before the kill: no half step, the kept steps' rates
    assert rates == pytest.approx([LR * f for f in [0.75, 0.5, 0.25]], rel=1e-12)
    assert torch.equal(params(resumed.model), params(straight.model))

    def untimed(path):
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in metric_rows(path)]

    assert untimed(tmp_path / "killed") == untimed(tmp_path / "straight")


def test_schedule_settings_join_the_record_only_when_the_rate_changes(tiny_lm, text_rows, tmp_path):
    flat = make_trainer(tiny_lm, text_rows, tmp_path / "a", "inpo").run_record()["run"]
    assert not {"lr_schedule", "warmup_ratio", "lr_schedule_span", "iterations"} & set(flat)
    constant_span = make_trainer(tiny_lm, text_rows, tmp_path / "a", "inpo", lr_schedule_span="iteration")
    assert constant_span.run_record()["run"] == flat  # a flat rate spans nothing
    per_iteration = make_trainer(tiny_lm, text_rows, tmp_path / "a", "inpo", lr_schedule="cosine",
                                 lr_schedule_span="iteration").run_record()["run"]
    assert per_iteration["lr_schedule"] == "cosine" and "iterations" not in per_iteration

    # over the run, the schedule's horizon is the run's length: a longer rerun is another run
    make_trainer(tiny_lm, text_rows, tmp_path / "b", "inpo", iterations=1, lr_schedule="linear").run()
    longer = make_trainer(tiny_lm, text_rows, tmp_path / "b", "inpo", iterations=2, lr_schedule="linear")
    with pytest.raises(RunDirectoryError, match=r"differs in run\.iterations"):
        longer.run()


def test_bad_schedules_are_refused(tiny_lm, text_rows, tmp_path):
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        SelfPlayConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="warmup_ratio must be in"):
        SelfPlayConfig(warmup_ratio=1.0)
    with pytest.raises(ValueError, match="unknown lr_schedule_span"):
        SelfPlayConfig(lr_schedule_span="epoch")
    # online IPO takes one step per iteration: warming up "each iteration" would never leave 0
    with pytest.raises(ValueError, match=r"warms up all 1 optimizer steps"):
        make_trainer(tiny_lm, text_rows, tmp_path, "online_ipo", warmup_ratio=0.5, lr_schedule_span="iteration")


def test_fp16_needs_cuda(tiny_lm, text_rows, tmp_path):
    assert SelfPlayConfig(mixed_precision="fp16").mixed_precision == "fp16"
    with pytest.raises(ValueError, match="mixed_precision 'fp16' needs a CUDA device, not cpu"):
        make_trainer(tiny_lm, text_rows, tmp_path, "inpo", mixed_precision="fp16")


def test_loss_scaling_unscales_before_clipping_and_the_half_step_leaves_no_trace(tiny_lm, text_rows, tmp_path,
                                                                                 one_torch_thread):
    """fp16's loss scaling, exercised on the CPU (the autocast itself needs CUDA): a power-of-two scale is
    undone exactly before clipping, so the weights equal an unscaled run's; the scale grows after each
    finite step, and the extragradient restore takes the half step's growth back."""
    plain = make_trainer(tiny_lm, text_rows, tmp_path / "plain", "egpo", iterations=1, max_grad_norm=0.05)
    plain.run()
    scaled = make_trainer(tiny_lm, text_rows, tmp_path / "scaled", "egpo", iterations=1, max_grad_norm=0.05)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    scaled.run()
    assert torch.allclose(params(scaled.model), params(plain.model), rtol=0, atol=1e-7)
    assert scaled.scaler.get_scale() == 2.0**13  # 3 kept steps; 2**16 had the half step's 3 stayed
    saved = torch.load(tmp_path / "scaled" / "checkpoint.pt", weights_only=False)
    assert saved["scaler"]["scale"] == 2.0**13
    assert math.isfinite(saved["schedule"]["last_epoch"]) and saved["schedule"]["last_epoch"] == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["egpo", "online_ipo"])
def test_fp16_on_cuda_trains_close_to_float32(method, tiny_lm, text_rows, tmp_path):
    """fp16 autocast with loss scaling on a GPU: finite, moved, close to the float32 run on the same samples."""
    plain = make_trainer(tiny_lm, text_rows, tmp_path / "plain", method, iterations=1, device="cuda")
    plain.run()
    half = make_trainer(tiny_lm, text_rows, tmp_path / "half", method, iterations=1, device="cuda",
                        mixed_precision="fp16")
    (tmp_path / "half" / "iterations").mkdir(parents=True)
    for path in (tmp_path / "plain" / "iterations").glob("*.pt"):  # the same judged samples
        (tmp_path / "half" / "iterations" / path.name).write_bytes(path.read_bytes())
    before = params(half.model).clone()
    half.run()
    after, want = params(half.model), params(plain.model)
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert half.run_record()["run"]["mixed_precision"] == "fp16" and half.scaler.is_enabled()
    # float16 rounding of the forward, not another update: far closer than the update's own size
    assert (after - want).norm() < 0.5 * (want - before).norm()
