"""Every bad input the project checks, through the command line: exit 2 (1 for divergence), one line on
stderr naming the problem, no traceback, and a run directory that a corrected command can still use.

``CASES`` is the table that docs/bad-input.md mirrors (a test below keeps the two in step). In a
case's command, ``{tmp}`` is the test's temporary directory, ``{data}`` the tiny Hopper dataset of
the session store, and the files named in ``_files`` exist under ``{tmp}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from _support import TINY_DATASET
from typer.testing import CliRunner

from hybridrl.cli import EXIT_BAD_INPUT, EXIT_DIVERGED, app

DOC = Path(__file__).parent.parent / "docs" / "bad-input.md"
# the corrected command of a case that touches a run directory: a few BC updates on the tiny dataset
TINY_BC = ("train bc --dataset {data} --steps 4 --eval-every 0 --eval-episodes 1 --log-every 2 "
           "--checkpoint-every 2 --hidden 8,8 --batch-size 8 --no-progress")
SAC = "train sac --env Pendulum-v1 --hidden 8,8 --batch-size 8 --no-progress"


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    command: str
    fragment: str
    """Text the stderr line must hold."""
    code: int = EXIT_BAD_INPUT
    out: str | None = None
    """The case's --out (a run directory the corrected command then uses), if it has one."""


CASES = [
    # numbers: run settings and hyperparameters, checked where they are defined, before anything is written
    Case("steps-zero", "numbers", TINY_BC + " --steps 0", "steps must be at least 1, got 0", out="{tmp}/run"),
    Case("steps-negative", "numbers", SAC + " --steps -5", "steps must be at least 1, got -5", out="{tmp}/run"),
    Case("checkpoint-every-zero", "numbers", TINY_BC + " --checkpoint-every 0", "checkpoint-every must be at least 1",
         out="{tmp}/run"),
    Case("log-every-zero", "numbers", TINY_BC + " --log-every 0", "log-every must be at least 1", out="{tmp}/run"),
    Case("eval-episodes-zero", "numbers", TINY_BC + " --eval-episodes 0", "eval-episodes must be at least 1",
         out="{tmp}/run"),
    Case("eval-every-negative", "numbers", TINY_BC + " --eval-every -1", "eval-every must be 0 or more",
         out="{tmp}/run"),
    Case("threads-negative", "numbers", TINY_BC + " --threads -1", "threads must be at least 1", out="{tmp}/run"),
    Case("eval-episodes-zero-eval", "numbers", "eval {tmp}/run --episodes 0", "--episodes must be at least 1"),
    Case("batch-size-zero", "numbers", TINY_BC + " --batch-size 0", "batch-size must be at least 1", out="{tmp}/run"),
    Case("hidden-zero-width", "numbers", "train cql --dataset {data} --hidden 0,256",
         "every layer width must be at least 1", out="{tmp}/run"),
    Case("gamma-above-one", "numbers", "train td3bc --dataset {data} --gamma 1.5", "gamma must be in [0, 1]",
         out="{tmp}/run"),
    Case("tau-negative", "numbers", "train iql --dataset {data} --tau -0.1", "tau must be in [0, 1]",
         out="{tmp}/run"),
    Case("lr-negative", "numbers", TINY_BC + " --lr -1", "lr must be above 0", out="{tmp}/run"),
    Case("actor-lr-negative", "numbers", SAC + " --actor-lr -0.001", "actor-lr must be above 0", out="{tmp}/run"),
    Case("online-budget-before-learning-starts", "numbers", SAC + " --steps 100",
         "learning-starts (5000) must be below steps (100)", out="{tmp}/run"),
    Case("bench-steps-negative", "numbers", "bench quick --steps -1 --out {tmp}/grid", "--steps must be at least 1"),
    Case("bench-steps-mixed-units", "numbers", "bench quick --steps 100 --out {tmp}/grid",
         "would mean environment steps for online runs"),
    Case("bench-steps-unknown-kind", "numbers", "bench quick --steps atari=10 --list", "use N or KIND=N"),
    Case("bench-online-budget", "numbers", "bench quick --methods sac --steps 10 --out {tmp}/grid",
         "learning-starts (5000) must be below steps (10)"),
    Case("pref-steps-zero", "numbers", "pref train dpo --model {tmp}/m --dataset {tmp}/pairs.jsonl --steps 0 "
         "--out {tmp}/pref", "steps must be at least 1"),
    Case("pref-lr-negative", "numbers", "pref train dpo --model {tmp}/m --dataset {tmp}/pairs.jsonl --lr -1 "
         "--out {tmp}/pref", "learning_rate must be positive"),
    # ids: methods, envs, dataset ids
    Case("unknown-method", "ids", "train cqll --dataset {data}", "did you mean cql"),
    Case("env-discrete-actions", "ids", SAC + " --env CartPole-v1 --steps 10 --learning-starts 0",
         "CartPole-v1 has a discrete action space", out="{tmp}/run"),
    Case("unknown-dataset", "ids", "train bc --dataset hybridrl/hopper/missing-v0", "unknown dataset"),
    Case("unknown-override", "ids", "train cql --dataset {data} --set typo=1", "unknown CQLConfig field(s)"),
    # paths
    Case("out-is-a-file", "paths", TINY_BC + " --out {tmp}/afile", "afile is a file; pass another --out"),
    Case("out-below-a-file", "paths", TINY_BC + " --out {tmp}/afile/run", "afile is a file; pass another --out"),
    Case("bench-out-is-a-file", "paths", "bench custom --methods bc --datasets {data} --steps 2 --out {tmp}/afile",
         "afile is a file; pass another --out"),
    Case("pref-out-below-a-file", "paths", "pref train dpo --model {tmp}/m --dataset {tmp}/pairs.jsonl "
         "--out {tmp}/afile/run", "afile is a file; pass another --out"),
    Case("eval-not-a-run-directory", "paths", "eval {tmp}/nowhere", "is not a run directory"),
    Case("selfplay-rm-judge-missing", "paths", "pref selfplay inpo --model {tmp}/m --prompts {tmp}/pairs.jsonl "
         "--judge rm:{tmp}/nowhere --out {tmp}/sp", "nowhere does not exist: pass a local model directory"),
    Case("train-judge-rm-without-model", "paths", "pref train-judge rm --pairs {tmp}/pairs.jsonl --out {tmp}/rm",
         "train-judge rm needs --model"),
    # datasets and grids
    Case("bench-unknown-dataset", "datasets", "bench custom --methods cql --datasets nope/x-v0 --steps 10 "
         "--out {tmp}/grid", "unknown dataset 'nope/x-v0'"),
    Case("bench-offline-without-dataset", "datasets", "bench custom --methods cql --envs hopper --steps 10 "
         "--out {tmp}/grid", "cql is an offline method"),
    Case("demo-transitions-differ", "datasets", "demo --transitions 5 --out {tmp}/demo",
         "already holds 1000 transitions"),
    # preference files
    Case("pref-empty-file", "preference files", "pref train dpo --model {tmp}/m --dataset {tmp}/empty.jsonl "
         "--out {tmp}/pref", "empty.jsonl is empty"),
    Case("pref-torn-last-line", "preference files", "pref train dpo --model {tmp}/m --dataset {tmp}/torn.jsonl "
         "--out {tmp}/pref", "torn.jsonl, line 2: not valid JSON (the file may be cut short)"),
    Case("pref-not-json", "preference files", "pref train dpo --model {tmp}/m --dataset {tmp}/text.jsonl "
         "--out {tmp}/pref", "text.jsonl, line 1: not valid JSON"),
    Case("pref-not-utf8", "preference files", "pref train dpo --model {tmp}/m --dataset {tmp}/latin1.jsonl "
         "--out {tmp}/pref", "latin1.jsonl, line 2: not UTF-8"),
    Case("pref-number-as-text", "preference files", "pref train dpo --model {tmp}/m --dataset {tmp}/number.jsonl "
         "--out {tmp}/pref", "number.jsonl, line 1: 'chosen' is a number (42)"),
    Case("selfplay-prompts-torn", "preference files", "pref selfplay inpo --model {tmp}/m --prompts {tmp}/torn.jsonl "
         "--out {tmp}/sp", "torn.jsonl, line 2: not valid JSON"),
    Case("selfplay-prompts-missing", "preference files", "pref selfplay inpo --model {tmp}/m --prompts "
         "{tmp}/nope.jsonl --out {tmp}/sp", "nope.jsonl does not exist; pass a .json, .jsonl, .parquet or .csv file"),
    Case("selfplay-prompts-no-such-field", "preference files", "pref selfplay inpo --model {tmp}/m --prompts "
         "{tmp}/pairs.jsonl --prompt-field question --out {tmp}/sp", "prompt rows have no 'question' field"),
    # run directories
    Case("run-directory-holds-another-run", "run directories", TINY_BC + " --hidden 4,4 --out {tmp}/done",
         "holds another run"),
    Case("diverged", "run directories", TINY_BC + " --steps 40 --log-every 5 --lr 1e30 --set normalize_states=true",
         "training diverged", code=EXIT_DIVERGED, out="{tmp}/run"),
]


def _files(tmp: Path) -> None:
    (tmp / "afile").write_text("not a directory\n")
    row = '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    (tmp / "pairs.jsonl").write_text(row)
    (tmp / "empty.jsonl").write_text("")
    (tmp / "torn.jsonl").write_text(row + '{"prompt": "a", "cho')
    (tmp / "text.jsonl").write_text("prompt,chosen,rejected\n")
    (tmp / "latin1.jsonl").write_bytes(row.encode() + '{"prompt": "café"}\n'.encode("latin-1"))
    (tmp / "number.jsonl").write_text('{"prompt": "a", "chosen": 42, "rejected": "c"}\n')


def _argv(command: str, tmp: Path) -> list[str]:
    return [part.format(tmp=tmp, data=TINY_DATASET) for part in command.split()]


def _invoke(command: str, tmp: Path, out: str | None = None):
    argv = _argv(command, tmp)
    if out is not None and "--out" not in argv:
        argv += ["--out", out.format(tmp=tmp)]
    return CliRunner().invoke(app, argv)


def _assert_one_line(result, case: Case) -> None:
    assert result.exit_code == case.code, (case.id, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, (case.id, result.stderr)
    assert "Traceback" not in result.output and case.fragment in lines[0], (case.id, lines[0])


@pytest.fixture
def workdir(tmp_path, store, monkeypatch):
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)  # a default run directory lands here, never in the checkout
    return tmp_path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, minari_store):
    """A finished tiny BC run (for the case of a run directory that holds another run)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(minari_store))
    tmp = tmp_path_factory.mktemp("done")
    result = _invoke(TINY_BC, tmp, "{tmp}/done")
    mp.undo()
    assert result.exit_code == 0, result.output
    return tmp / "done"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line(case, workdir, finished_run):
    if case.id == "run-directory-holds-another-run":
        case = Case(case.id, case.group, case.command.replace("{tmp}/done", str(finished_run)), case.fragment)
    _assert_one_line(_invoke(case.command, workdir, case.out), case)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", [c for c in CASES if c.out == "{tmp}/run" and c.command.startswith(TINY_BC)],
                         ids=lambda c: c.id)
def test_a_failed_command_leaves_its_run_directory_usable(case, workdir):
    _assert_one_line(_invoke(case.command, workdir, case.out), case)
    fixed = _invoke(TINY_BC, workdir, case.out)
    assert fixed.exit_code == 0, (case.id, fixed.output)


@pytest.mark.filterwarnings("ignore")
def test_an_online_run_refused_for_its_budget_leaves_its_run_directory_usable(workdir):
    case = next(c for c in CASES if c.id == "online-budget-before-learning-starts")
    _assert_one_line(_invoke(case.command, workdir, case.out), case)
    fixed = _invoke(SAC + " --steps 6 --learning-starts 3 --eval-every 0 --eval-episodes 1 --log-every 3 "
                    "--checkpoint-every 3", workdir, case.out)
    assert fixed.exit_code == 0, fixed.output


def test_the_doc_lists_every_case_and_only_those():
    text = DOC.read_text()
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.MULTILINE)
    assert sorted(listed) == sorted(c.id for c in CASES)
    for case in CASES:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{case.id}` |"))
        assert case.fragment.replace("|", "\\|") in row, f"docs/bad-input.md's row of {case.id} lacks its message"
    groups = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert {c.group for c in CASES} <= {g.strip().lower() for g in groups}


def test_a_read_only_run_directory_is_one_line(workdir, monkeypatch):
    import errno

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    case = Case("read-only", "paths", TINY_BC + " --out {tmp}/ro", "(read-only filesystem); pass another --out")
    _assert_one_line(_invoke(case.command, workdir), case)
    case = Case("read-only", "paths", "pref train dpo --model {tmp}/m --dataset {tmp}/pairs.jsonl --out {tmp}/ro",
                "(read-only filesystem); pass another --out")
    _assert_one_line(_invoke(case.command, workdir), case)


def test_every_rl_config_checks_its_fields_by_name():
    """Learning rates, gamma, tau, batch size and widths of every registered RL method (a new method file
    included) are refused where its config is defined."""
    import dataclasses

    from hybridrl import registry

    bad = {"lr": -1.0, "gamma": 1.5, "tau": -0.1, "batch_size": 0, "hidden": (0, 8)}
    for spec in registry.of_family(*registry.RL_FAMILIES).values():
        config = spec.default_config()
        for f in dataclasses.fields(config):
            key = "lr" if f.name == "lr" or f.name.endswith("_lr") else f.name
            if key in bad:
                with pytest.raises(ValueError, match=f.name.replace("_", "-") if key != "lr" else "must be above 0"):
                    dataclasses.replace(config, **{f.name: bad[key]})
