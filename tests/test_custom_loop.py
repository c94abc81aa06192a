"""A method whose data plan is ``custom`` runs its own loop on the runner's session: it is built from
the same context, its checkpoints resume, and its results land where every run's do."""

from dataclasses import dataclass

import pytest
import torch
from _support import TINY_DATASET

from hybridrl import registry
from hybridrl.core.config import RunConfig
from hybridrl.core.plan import DataPlan
from hybridrl.runners import LoopResources, run


@dataclass(frozen=True, kw_only=True)
class StagedConfig:
    batch_size: int = 8
    """Rows per step."""


class Staged:
    """Two stages, as a model-based method has: fit a mean of the data's rewards, then count steps."""

    def __init__(self, config, ctx):
        self.config = config
        self.mean = torch.zeros((), device=ctx.device)
        self.stage_two_steps = 0
        self.act_dim = ctx.act_dim

    def act(self, obs, *, deterministic=True):
        return torch.zeros(obs.shape[0], self.act_dim)

    def state_dict(self):
        return {"mean": self.mean.clone(), "stage_two_steps": self.stage_two_steps}

    def load_state_dict(self, state):
        self.mean, self.stage_two_steps = state["mean"].clone(), state["stage_two_steps"]


def staged_loop(algo: Staged, res: LoopResources):
    session, steps = res.session, res.run.steps
    if session.resume_state is not None:
        algo.load_state_dict(session.resume_state["algo"])
        session.restore_rng()
    with session:
        for step in range(session.start + 1, steps + 1):
            batch = res.buffer.sample(algo.config.batch_size)
            if step <= steps // 2:  # stage one: a running mean of rewards
                algo.mean = algo.mean + (batch.reward.mean() - algo.mean) / step
            else:
                algo.stage_two_steps += 1
            session.add({"mean": algo.mean})
            session.advance()
            if step % 5 == 0:
                session.flush(step)
                session.save(step, {"algo": algo.state_dict()})
                if step == CRASH_AT[0]:
                    raise KeyboardInterrupt
        return res.evaluate_fn(lambda obs: torch.zeros(obs.shape[0], algo.act_dim).numpy())


CRASH_AT = [None]


@pytest.fixture
def staged_method():
    spec = registry.register(registry.MethodSpec(name="staged", family="offline", config=StagedConfig,
                                                 build=Staged, summary="a two-stage test method",
                                                 plan=lambda config: DataPlan("custom"), loop=staged_loop))
    yield spec
    del registry.METHODS[(spec.family, spec.name)]


def test_a_custom_loop_runs_on_the_session_and_resumes(store, tmp_path, staged_method):
    from hybridrl.core.session import Interrupted

    config = RunConfig(steps=20, eval_episodes=1, progress=False, device="cpu")
    straight = run("staged", config, dataset=TINY_DATASET, out_dir=tmp_path / "straight")
    CRASH_AT[0] = 10
    with pytest.raises(Interrupted, match="progress up to step 10 is saved"):
        run("staged", config, dataset=TINY_DATASET, out_dir=tmp_path / "resumed")
    CRASH_AT[0] = None
    resumed = run("staged", config, dataset=TINY_DATASET, out_dir=tmp_path / "resumed")
    assert resumed["eval"] == straight["eval"] and resumed["return_mean"] is not None
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["algo"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["algo"]
    assert torch.equal(a["mean"], b["mean"]) and a["stage_two_steps"] == b["stage_two_steps"] == 10
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text().count("\n") == 4
