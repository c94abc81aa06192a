"""The pairwise trainer on two data-parallel processes (``torchrun``, gloo on the CPU) against one process.

Two processes of ``batch_size`` pairs with no accumulation see the pairs that one process sees over two
accumulated micro-batches of the same size, in the same order, and DDP averages what accumulation
averages: the runs must end with the same weights and log the same losses, the reference table must be
the one-process table (each process scores its share, then the shares are summed), and only the first
process writes the run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

WORKER = textwrap.dedent('''
    import json, sys
    import torch
    from hybridrl.preference.data import tokenize_pairs
    from hybridrl.preference.losses import PreferenceLossConfig
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig

    job = json.load(open(sys.argv[1]))
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(job["model"])
    pairs, _ = tokenize_pairs(job["rows"], tokenizer)
    trainer = PairwiseTrainer(model=load_causal_lm(job["model"]), tokenizer=tokenizer, pairs=pairs,
                              loss_config=PreferenceLossConfig(beta=0.5),
                              train_config=TrainConfig(**job["settings"]), out_dir=job["out"])
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    rank = trainer.accelerator.process_index
    torch.save({"world": trainer.accelerator.num_processes, "ref_table": trainer.ref_table,
                "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()])},
               f"{job['out']}/rank{rank}.pt")
''')

SETTINGS = dict(steps=4, batch_size=3, learning_rate=1e-3, log_every=1, save_every=2, progress=False, seed=3)


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def untimed(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_two_processes_train_as_one_process_with_accumulation(tiny_lm, text_rows, tmp_path, one_torch_thread):
    from hybridrl.preference.data import tokenize_pairs
    from hybridrl.preference.losses import PreferenceLossConfig
    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig

    tokenizer = load_tokenizer(tiny_lm[0])
    pairs, _ = tokenize_pairs(text_rows, tokenizer)
    single = PairwiseTrainer(model=load_causal_lm(tiny_lm[0]), tokenizer=tokenizer, pairs=pairs,
                             loss_config=PreferenceLossConfig(beta=0.5),
                             train_config=TrainConfig(**SETTINGS, gradient_accumulation_steps=2, device="cpu"),
                             out_dir=tmp_path / "single")
    single.train()

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": str(tiny_lm[0]), "rows": text_rows, "settings": SETTINGS,
                               "out": str(tmp_path / "two")}))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "worker.py"), str(job)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]

    # the reference table: each process scored its share, the sum is the one-process table
    for r in ranks:
        assert torch.allclose(r["ref_table"], single.ref_table, rtol=0, atol=1e-5)
    # every process took the same steps, and they are the one-process steps (sums differ only in order)
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    want = params(single.accelerator.unwrap_model(single.model))
    update = (want - params(load_causal_lm(tiny_lm[0]))).abs().max().item()
    assert update > 0
    # Adam divides by the root of tiny second moments, so summation-order noise in near-zero gradients
    # shows in the weights at ~1% of the update (the losses below agree to 1e-6); other batches or a
    # wrong average would differ by the update itself
    tolerance = 0.05 * update
    assert torch.allclose(ranks[0]["params"], want, rtol=0, atol=tolerance)
    assert torch.allclose(params(load_causal_lm(tmp_path / "two" / "model")), want, rtol=0, atol=tolerance)
    # one metrics file, written once, with the one-process losses
    got, expected = untimed(tmp_path / "two" / "metrics.jsonl"), untimed(tmp_path / "single" / "metrics.jsonl")
    assert [row["step"] for row in got] == [row["step"] for row in expected]
    for row, reference in zip(got, expected, strict=True):
        # (not the accuracy: at the first step the policy is the reference, and margins of 0 +- 1e-7 flip it)
        for key in ("loss", "rewards/margins", "grad_norm"):
            assert abs(row[key] - reference[key]) <= 1e-5 * max(1.0, abs(reference[key])), key
