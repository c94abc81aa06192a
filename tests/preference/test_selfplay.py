"""Self-play loop on a tiny Llama: every registered method runs 2 iterations; kill and resume never re-judge."""

from __future__ import annotations

import json

import pytest
import torch

from hybridrl.core.session import Interrupted, RunDirectoryError, Session
from hybridrl.preference.oracles import MajorityJudge
from hybridrl.preference.sampling import sample_completions
from hybridrl.preference.selfplay import SelfPlayConfig, SelfPlayTrainer, resolve_selfplay_method
from hybridrl.preference.selfplay_spec import SELFPLAY_METHODS, all_pairs, method_config, win_rates

resolve_selfplay_method("inpo")  # fills the registry for parametrize
METHODS = sorted(SELFPLAY_METHODS)


class CountingJudge:
    """The majority judge, counting every pair it is asked about."""

    def __init__(self):
        self.calls = 0
        self.inner = MajorityJudge()

    def preference(self, prompt, first, second):
        self.calls += 1
        return self.inner.preference(prompt, first, second)


def make_trainer(tiny_lm, text_rows, out_dir, method, judge, **overrides):
    from hybridrl.preference.models import load_causal_lm, load_tokenizer

    spec = resolve_selfplay_method(method)
    settings = dict(
        iterations=2,
        samples_per_prompt=4,
        prompts_per_iteration=8,
        steps_per_iteration=3,
        batch_size=8,
        learning_rate=1e-3,
        max_new_tokens=6,
        progress=False,
        device="cpu",
    )
    settings.update(overrides)
    return SelfPlayTrainer(
        spec=spec,
        method_config=method_config(spec),
        config=SelfPlayConfig(**settings),
        model=load_causal_lm(tiny_lm[0]),
        ref_model=load_causal_lm(tiny_lm[0]),
        tokenizer=load_tokenizer(tiny_lm[0]),
        prompts=[r["prompt"] for r in text_rows],
        judge=judge,
        out_dir=out_dir,
    )


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("method", METHODS)
def test_two_iterations_end_to_end(method, tiny_lm, text_rows, tmp_path, one_torch_thread):
    judge = CountingJudge()
    trainer = make_trainer(tiny_lm, text_rows, tmp_path / method, method, judge)
    before = params(trainer.model).clone()
    last = trainer.run()
    assert trainer.iteration == 2
    assert not torch.equal(before, params(trainer.model))
    assert torch.isfinite(params(trainer.model)).all()
    lines = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [0, 1]
    # K(K-1)/2 = 6 queries per prompt, and K^2 = 16 more against opponents for EG methods and Nash-MD
    spec = SELFPLAY_METHODS[method]
    per_prompt = 6 + (16 if spec.extragradient or spec.mixture_opponents else 0)
    assert judge.calls == 2 * 8 * per_prompt == 2 * last["judge_calls"]
    assert (tmp_path / method / "model" / "config.json").exists()
    assert (tmp_path / method / "iterations" / "iter-0001-samples.pt").exists()


@pytest.mark.parametrize("method", ["online_ipo", "nash_md"])
def test_unanchored_methods_take_one_step_of_the_learning_rate(method, tiny_lm, text_rows, tmp_path, one_torch_thread):
    """Online IPO and Nash-MD take one optimizer step per iteration on all its pairs, as their reference
    trainers: neither steps_per_iteration nor batch_size changes the update, and AdamW's first step moves
    no parameter further than the learning rate."""
    finals = []
    for steps, batch in ((3, 8), (5, 3)):
        trainer = make_trainer(tiny_lm, text_rows, tmp_path / f"run-{steps}", method, CountingJudge(), iterations=1,
                               steps_per_iteration=steps, batch_size=batch)
        calls = []
        trainer.optimizer.register_step_post_hook(lambda *args, calls=calls: calls.append(1))
        before = params(trainer.model).clone()
        trainer.run()
        assert len(calls) == 1
        moved = (params(trainer.model) - before).abs().max().item()
        assert 0 < moved <= trainer.config.learning_rate * (1 + 1e-4)
        finals.append(params(trainer.model))
    assert torch.allclose(finals[0], finals[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["egpo", "inpo"])
def test_killed_run_resumes_without_rejudging_and_matches(method, tiny_lm, text_rows, tmp_path, one_torch_thread):
    straight_judge = CountingJudge()
    straight = make_trainer(tiny_lm, text_rows, tmp_path / "straight", method, straight_judge)
    straight.run()

    # kill in the middle of iteration 1's (last) update, after its samples were judged and persisted
    first_judge = CountingJudge()
    killed = make_trainer(tiny_lm, text_rows, tmp_path / "killed", method, first_judge)
    real_update = killed.update
    last_phase = 1 if SELFPLAY_METHODS[method].extragradient else 0

    def update_then_die(*args, iteration, phase):
        if iteration == 1 and phase == last_phase:
            raise KeyboardInterrupt
        return real_update(*args, iteration=iteration, phase=phase)

    killed.update = update_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert first_judge.calls == straight_judge.calls  # everything was judged before the kill

    second_judge = CountingJudge()
    resumed = make_trainer(tiny_lm, text_rows, tmp_path / "killed", method, second_judge)
    resumed.run()
    assert second_judge.calls == 0
    assert torch.equal(params(resumed.model), params(straight.model))
    metrics = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in metrics] == [0, 1]


def test_rerun_of_a_finished_run_does_nothing_and_a_longer_one_continues(tiny_lm, text_rows, tmp_path):
    judge = CountingJudge()
    make_trainer(tiny_lm, text_rows, tmp_path / "r", "sppo", judge, iterations=1).run()
    calls = judge.calls
    make_trainer(tiny_lm, text_rows, tmp_path / "r", "sppo", judge, iterations=1).run()
    assert judge.calls == calls
    make_trainer(tiny_lm, text_rows, tmp_path / "r", "sppo", judge, iterations=2).run()
    assert judge.calls == 2 * calls
    moved = make_trainer(tiny_lm, text_rows[::-1], tmp_path / "r", "sppo", judge, iterations=3)
    with pytest.raises(RunDirectoryError, match=r"differs in prompts_sha256\)"):
        moved.run()
    with pytest.raises(RunDirectoryError, match=r"holds another run \(it differs in method, method_config"):
        make_trainer(tiny_lm, text_rows, tmp_path / "r", "inpo", judge).run()


def untimed(path):
    """The metric lines of a run without their wall-clock columns (those differ between any two runs)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_resumed_metrics_equal_an_uninterrupted_runs(tiny_lm, text_rows, tmp_path, one_torch_thread):
    make_trainer(tiny_lm, text_rows, tmp_path / "straight", "egpo", CountingJudge()).run()
    killed = make_trainer(tiny_lm, text_rows, tmp_path / "killed", "egpo", CountingJudge())
    real_update = killed.update

    def update_then_die(*args, iteration, phase):
        if iteration == 1 and phase == 1:  # after iteration 1's samples and half step were persisted
            raise KeyboardInterrupt
        return real_update(*args, iteration=iteration, phase=phase)

    killed.update = update_then_die
    with pytest.raises((KeyboardInterrupt, Interrupted)) as caught:  # a bare KeyboardInterrupt would end pytest
        killed.run()
    assert caught.type is Interrupted and "progress up to iteration 1 is saved" in str(caught.value)
    make_trainer(tiny_lm, text_rows, tmp_path / "killed", "egpo", CountingJudge()).run()
    straight, resumed = untimed(tmp_path / "straight" / "metrics.jsonl"), untimed(tmp_path / "killed" / "metrics.jsonl")
    assert [row["iteration"] for row in resumed] == [0, 1] and resumed == straight


def test_final_metrics_survive_a_kill_after_the_last_checkpoint(tiny_lm, text_rows, tmp_path):
    killed = make_trainer(tiny_lm, text_rows, tmp_path, "sppo", CountingJudge(), iterations=1)

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    killed.model.save_pretrained = die  # killed after the last checkpoint, before the model and results
    with pytest.raises((KeyboardInterrupt, Interrupted)):
        killed.run()
    judge = CountingJudge()
    last = make_trainer(tiny_lm, text_rows, tmp_path, "sppo", judge, iterations=1).run()
    assert judge.calls == 0 and {"loss/first", "loss/last", "samples/kl_to_ref", "judge_calls"} <= set(last)
    assert (tmp_path / "model" / "config.json").exists() and (tmp_path / "results.json").exists()
    again = make_trainer(tiny_lm, text_rows, tmp_path, "sppo", judge, iterations=1)
    assert again.run() == last and again.iteration == 1 and judge.calls == 0


def test_a_second_process_on_the_run_directory_is_refused(tiny_lm, text_rows, tmp_path):
    import os

    trainer = make_trainer(tiny_lm, text_rows, tmp_path, "sppo", CountingJudge(), iterations=1)
    holder = Session(tmp_path, trainer.run_record(), total=1, progress=False)
    try:
        with pytest.raises(RunDirectoryError, match=f"in use by process {os.getpid()}"):
            trainer.run()
    finally:
        holder.release()
    trainer.run()
    assert trainer.iteration == 1


def test_reference_model_is_bitwise_unchanged_by_selfplay(tiny_lm, text_rows, tmp_path, one_torch_thread):
    from hybridrl.preference.models import load_causal_lm

    trainer = make_trainer(tiny_lm, text_rows, tmp_path, "nash_md", CountingJudge())  # samples from the mixture
    before = {k: v.detach().clone() for k, v in trainer.ref_model.state_dict().items()}
    policy_before = params(trainer.model).clone()
    trainer.run()
    pristine = load_causal_lm(tiny_lm[0]).state_dict()
    for key, value in trainer.ref_model.state_dict().items():
        assert torch.equal(before[key], value) and torch.equal(pristine[key], value), key
    assert not torch.equal(policy_before, params(trainer.model))


def test_mixture_sampling_follows_the_reference_when_alpha_is_one(tiny_lm):
    from hybridrl.preference.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_lm[0])
    policy, reference = load_causal_lm(tiny_lm[0]), load_causal_lm(tiny_lm[1])
    prompts = tokenizer(["write two words about animals and tools using saw :"] * 3)["input_ids"]
    kwargs = dict(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=5, temperature=1.0
    )
    mixed = sample_completions(
        policy, prompts, generator=torch.Generator().manual_seed(3), mixture=(reference, 1.0), **kwargs
    )
    plain = sample_completions(reference, prompts, generator=torch.Generator().manual_seed(3), **kwargs)
    assert mixed == plain
    assert all(1 <= len(row) <= 5 for row in plain)


def test_target_helpers():
    first, second = all_pairs(2, 3)
    assert first.tolist() == [0, 0, 1, 3, 3, 4] and second.tolist() == [1, 2, 2, 4, 5, 5]
    prefs = torch.tensor([[[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]]], dtype=torch.float64)
    assert win_rates(prefs, None).tolist() == [[0.5, 0.5, 0.5]]  # a cycle: everyone wins half
    assert win_rates(prefs, torch.ones(1, 3, 2)).tolist() == [[1.0, 1.0, 1.0]]


def test_unknown_method_and_parameter():
    with pytest.raises(ValueError, match="unknown self-play method 'ppo': choose one of"):
        resolve_selfplay_method("ppo")
    with pytest.raises(ValueError, match="inpo has no parameter 'beta': choose one of eta, tau"):
        method_config(resolve_selfplay_method("inpo"), {"beta": "0.1"})
    assert method_config(resolve_selfplay_method("inpo"), {"eta": "4"}).eta == 4.0


def test_micro_batches_checkpointing_and_host_backups_leave_an_egpo_run_unchanged(tiny_lm, text_rows, tmp_path,
                                                                                  one_torch_thread):
    """Gradient accumulation over micro-batches, activation recomputation and an extragradient backup
    kept in host memory change how a step is computed, not what: the same weights after an iteration."""
    plain = make_trainer(tiny_lm, text_rows, tmp_path / "plain", "egpo", CountingJudge(), iterations=1)
    plain.run()
    scaled = make_trainer(tiny_lm, text_rows, tmp_path / "scaled", "egpo", CountingJudge(), iterations=1,
                          micro_batch_size=3, gradient_checkpointing=True, cpu_backups=True)
    copies = []
    original = scaled._optimizer_copy
    scaled._optimizer_copy = lambda: copies.append(original()) or copies[-1]
    scaled.run()
    assert all(v.device.type == "cpu" for slot in copies[0]["state"].values() for v in slot.values()
               if isinstance(v, torch.Tensor))
    assert torch.allclose(params(plain.model), params(scaled.model), rtol=0, atol=1e-6)
    # how a step is computed is not part of the run's record: the plain run's directory resumes with them
    assert scaled.run_record() == plain.run_record()


def test_bf16_autocast_trains_and_is_part_of_the_record(tiny_lm, text_rows, tmp_path, one_torch_thread):
    trainer = make_trainer(tiny_lm, text_rows, tmp_path, "inpo", CountingJudge(), iterations=1, mixed_precision="bf16")
    before = params(trainer.model).clone()
    trainer.run()
    after = params(trainer.model)
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert trainer.run_record()["run"]["mixed_precision"] == "bf16"
    with pytest.raises(ValueError, match="unknown mixed_precision"):
        SelfPlayConfig(mixed_precision="fp8")
