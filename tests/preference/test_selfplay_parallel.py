"""Self-play on two processes (``torchrun``, gloo on the CPU) against the same run on one.

Each process samples and judges its shard of the prompts from its own stream, so a fresh two-process
run draws other answers than a one-process run: what must hold is that the judge is asked as often
in all, that every process ends with the same weights, and that, given the same judged samples
(copied from the one-process run), the updates are the one-process updates: the half step of EGPO
(before its opponents are sampled) and the whole run when its opponents are copied too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from hybridrl.preference.selfplay_parallel import Processes, join_shards

WORKER = textwrap.dedent('''
    import json, sys
    import torch
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.oracles import MajorityJudge
    from hybridrl.preference.selfplay import SelfPlayConfig, SelfPlayTrainer, resolve_selfplay_method
    from hybridrl.preference.selfplay_spec import method_config

    class CountingJudge:
        def __init__(self):
            self.calls, self.inner = 0, MajorityJudge()

        def preference(self, prompt, first, second):
            self.calls += 1
            return self.inner.preference(prompt, first, second)

    job = json.load(open(sys.argv[1]))
    torch.set_num_threads(1)
    for out in job["runs"]:
        spec = resolve_selfplay_method(job["method"])
        judge = CountingJudge()
        trainer = SelfPlayTrainer(spec=spec, method_config=method_config(spec),
                                  config=SelfPlayConfig(**job["settings"]), model=load_causal_lm(job["model"]),
                                  ref_model=load_causal_lm(job["model"]), tokenizer=load_tokenizer(job["model"]),
                                  prompts=job["prompts"], judge=judge, out_dir=out,
                                  eval_prompts=job["eval_prompts"] if out == job["eval_run"] else None)
        half = []
        real = trainer.collect_half_step_opponents

        def collect(iteration, samples, real=real, half=half, trainer=trainer):
            half.append(torch.cat([p.detach().reshape(-1).clone() for p in trainer.model.parameters()]))
            return real(iteration, samples)

        trainer.collect_half_step_opponents = collect
        last = trainer.run()
        rank = trainer.processes.rank
        torch.save({"world": trainer.processes.world, "calls": judge.calls, "judge_calls": trainer.judge_calls,
                    "last": last,
                    "half": half[0], "params": torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])},
                   f"{out}/rank{rank}.pt")
''')

SETTINGS = dict(iterations=2, samples_per_prompt=4, prompts_per_iteration=8, steps_per_iteration=3, batch_size=8,
                learning_rate=1e-3, max_new_tokens=6, progress=False, device="cpu", micro_batch_size=3)


class CountingJudge:
    def __init__(self):
        from hybridrl.preference.oracles import MajorityJudge

        self.calls, self.inner = 0, MajorityJudge()

    def preference(self, prompt, first, second):
        self.calls += 1
        return self.inner.preference(prompt, first, second)


def untimed(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_two_processes_judge_as_often_agree_and_update_as_one(tiny_lm, text_rows, tmp_path, one_torch_thread):
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.selfplay import SelfPlayConfig, SelfPlayTrainer, resolve_selfplay_method
    from hybridrl.preference.selfplay_spec import method_config

    prompts = [r["prompt"] for r in text_rows]
    spec = resolve_selfplay_method("egpo")
    judge = CountingJudge()
    single = SelfPlayTrainer(spec=spec, method_config=method_config(spec), config=SelfPlayConfig(**SETTINGS),
                             model=load_causal_lm(tiny_lm[0]), ref_model=load_causal_lm(tiny_lm[0]),
                             tokenizer=load_tokenizer(tiny_lm[0]), prompts=prompts, judge=judge,
                             out_dir=tmp_path / "single")
    halves = []
    real = single.collect_half_step_opponents
    single.collect_half_step_opponents = lambda i, s: halves.append(params(single.model).clone()) or real(i, s)
    single.run()

    # "replay" gets the one-process run's judged answers, "copied" its half-step opponents too
    for name, pattern in (("replay", "iter-*-samples.pt"), ("copied", "iter-*.pt")):
        (tmp_path / name / "iterations").mkdir(parents=True)
        for path in (tmp_path / "single" / "iterations").glob(pattern):
            shutil.copy(path, tmp_path / name / "iterations" / path.name)
    runs = [str(tmp_path / name) for name in ("fresh", "replay", "copied")]
    job = tmp_path / "job.json"
    # the fresh run also evaluates on 5 held-out prompts: uneven shards of 2 and 3
    eval_prompts = prompts[-5:]
    job.write_text(json.dumps({"method": "egpo", "model": str(tiny_lm[0]), "prompts": prompts,
                               "settings": SETTINGS, "runs": runs, "eval_prompts": eval_prompts,
                               "eval_run": runs[0]}))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "worker.py"), str(job)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = {name: [torch.load(tmp_path / name / f"rank{r}.pt") for r in range(2)]
               for name in ("fresh", "replay", "copied")}
    assert all(r["world"] == 2 for ranks in results.values() for r in ranks)

    # fresh: the judge answered the one-process number of questions in all, and those of two evaluations (the
    # training judge_calls leave them out); both ranks hold equal weights and the same evaluation
    fresh = results["fresh"]
    evaluations = 2 * len(eval_prompts) * 2  # eval_every 1, two answers per prompt
    assert fresh[0]["calls"] > 0 and fresh[1]["calls"] > 0
    assert fresh[0]["calls"] + fresh[1]["calls"] == judge.calls + evaluations
    assert judge.calls == fresh[0]["judge_calls"] == fresh[1]["judge_calls"]
    evaluated = [{k: v for k, v in rank["last"].items() if k.startswith("eval/")} for rank in fresh]
    assert evaluated[0] == evaluated[1] and evaluated[0]["eval/judge_calls"] == len(eval_prompts) * 2
    assert torch.equal(fresh[0]["params"], fresh[1]["params"])
    assert not torch.equal(fresh[0]["params"], params(load_causal_lm(tiny_lm[0])))
    saved = params(load_causal_lm(tmp_path / "fresh" / "model"))
    assert torch.equal(saved, fresh[0]["params"])
    lines = [json.loads(line) for line in (tmp_path / "fresh" / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [0, 1]  # written once, by the main process
    assert lines[-1]["eval/win_rate_vs_ref"] == fresh[0]["last"]["eval/win_rate_vs_ref"]
    assert all(0.0 <= line["eval/win_rate_vs_ref"] <= 1.0 for line in lines)
    assert len(list((tmp_path / "fresh" / "iterations").glob("*.pt"))) == 4

    # given the same samples the steps are the one-process steps (the sums differ only in order)
    scale = params(single.model).abs().max().item()
    replay = results["replay"]
    opponent_calls = 2 * 8 * 16  # only the half-step opponents were judged again
    assert replay[0]["calls"] + replay[1]["calls"] == opponent_calls
    assert torch.equal(replay[0]["half"], replay[1]["half"])
    assert torch.allclose(replay[0]["half"], halves[0], rtol=0, atol=1e-5 * scale)
    copied = results["copied"]
    assert copied[0]["calls"] == copied[1]["calls"] == 0
    assert torch.equal(copied[0]["params"], copied[1]["params"])
    assert torch.allclose(copied[0]["params"], params(single.model), rtol=0, atol=1e-5 * scale)
    # and so are the losses: each process's sum over its part, divided by the global batch, summed
    want, got = (untimed(tmp_path / name / "metrics.jsonl") for name in ("single", "copied"))
    assert [set(row) for row in got] == [set(row) for row in want]
    for row, expected in zip(got, want, strict=True):
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_shards_cover_the_items_in_order_and_join_back():
    items = list(range(7))
    shards = [Processes(torch.device("cpu"), rank, 3).part(items) for rank in range(3)]
    assert shards == [[0, 1], [2, 3], [4, 5, 6]]
    assert Processes(torch.device("cpu"), 3, 4).part([1, 2]) == [2] and Processes(torch.device("cpu"), 0, 4).part(
        [1, 2]) == []
    pieces = [{"ids": [[1], [2]], "p": torch.zeros(2, 3), "none": None}, {"ids": [], "p": torch.ones(0, 3),
                                                                           "none": None}]
    joined = join_shards(pieces)
    assert joined["ids"] == [[1], [2]] and joined["p"].shape == (2, 3) and joined["none"] is None


@pytest.mark.parametrize("name", ["FSDP", "DEEPSPEED"])
def test_sharded_launch_configs_are_refused(name, monkeypatch):
    from hybridrl.preference.selfplay_parallel import make_processes

    monkeypatch.setenv(f"ACCELERATE_USE_{name}", "true")
    with pytest.raises(ValueError, match=f"configured for {name}.*data-parallel only"):
        make_processes("cpu")

