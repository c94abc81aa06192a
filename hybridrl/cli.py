"""The ``hybridrl`` command: data, train, eval, bench, report, demo, algos (and ``pref`` for language models).

Thin: it parses, calls the library, prints. Bad input ends with one line on stderr naming the
problem and the fix, and a non-zero exit code (2 for bad input, 1 for a diverged run).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.core

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Offline, hybrid and preference-based policy optimization.")
data_app = typer.Typer(no_args_is_help=True, help="Make, list and inspect Minari datasets.")
app.add_typer(data_app, name="data")

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130

DEMO_TRANSITIONS = 20_000


def user_errors(fn):
    """Turn the library's errors about user input into one stderr line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from hybridrl.bench.bundled import BundleError
        from hybridrl.control.datasets import DatasetError
        from hybridrl.factory import BehaviourPolicyError
        from hybridrl.core.session import DivergenceError, Interrupted, RunDirectoryError

        try:
            return fn(*args, **kwargs)
        except Interrupted as err:
            typer.echo(f"{err}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (DivergenceError, BehaviourPolicyError, BundleError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(EXIT_DIVERGED) from None
        except (DatasetError, RunDirectoryError, ValueError, KeyError, FileNotFoundError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


@data_app.command("list")
@user_errors
def data_list() -> None:
    """List the datasets in the local Minari store and the recipes `data make` offers."""
    from hybridrl.control.datasets import datasets_root, local_dataset_ids
    from hybridrl.factory import FACTORY_TASKS, QUALITIES

    ids = local_dataset_ids()
    typer.echo(f"local Minari store: {datasets_root()}")
    for dataset_id in ids:
        typer.echo(f"  {dataset_id}")
    if not ids:
        typer.echo("  (empty)")
    typer.echo(f"recipes for `hybridrl data make TASK QUALITY`: tasks {', '.join(FACTORY_TASKS)}; "
               f"qualities {', '.join(QUALITIES)}")


@data_app.command("make")
@user_errors
def data_make(
    task: Annotated[str, typer.Argument(help="hopper, halfcheetah or walker2d")],
    quality: Annotated[str, typer.Argument(help="random, medium, medium-replay, expert or medium-expert")],
    small: Annotated[bool, typer.Option("--small", help="Laptop preset: 100k transitions, 300k SAC steps.")] = False,
    transitions: Annotated[int | None, typer.Option(help="Transitions per rolled-out dataset (D4RL: 1M).")] = None,
    sac_steps: Annotated[int | None, typer.Option(help="SAC environment steps for the expert policy.")] = None,
    sac_hidden: Annotated[str | None, typer.Option(help="Behaviour SAC's hidden widths, e.g. 256,256.")] = None,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (SAC training).")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset.")] = False,
    progress: bool = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads for SAC (default: one per core).")] = None,
    out_id: Annotated[str | None, typer.Option("--id", help="Dataset id (default hybridrl/TASK/QUALITY-v0).")] = None,
) -> None:
    """Make a D4RL-style dataset from real MuJoCo rollouts into the local Minari store.

    Behaviour policies are trained with SAC once and reused; an interrupted command resumes.
    """
    from hybridrl.core.config import with_overrides
    from hybridrl.factory import factory_config, make_dataset
    from hybridrl.online.sac import SACConfig

    if transitions is not None and transitions <= 0:
        raise ValueError("--transitions must be positive")
    widths = None
    if sac_hidden is not None:
        try:  # the same comma-list parsing as every config override
            widths = with_overrides(SACConfig(), {"hidden": sac_hidden}).hidden
        except ValueError:
            widths = ()
        if not widths or min(widths) <= 0:
            raise ValueError(f"--sac-hidden {sac_hidden!r} is not a list of positive widths: use e.g. 256,256")
    config = factory_config(small, transitions=transitions, sac_steps=sac_steps, sac_hidden=widths)
    dataset_id = make_dataset(task, quality, config=config, seed=seed, device=device, overwrite=overwrite,
                              progress=progress, threads=threads, out_id=out_id)
    typer.echo(f"wrote {dataset_id}")


@data_app.command("info")
@user_errors
def data_info(dataset_id: str, download: bool = False) -> None:
    """Episodes, transitions, return statistics and reference scores of a dataset."""
    import numpy as np

    from hybridrl.control import datasets
    from hybridrl.control.scores import normalized_score

    data = datasets.load(dataset_id, download=download)
    ret = data.episode_returns
    typer.echo(f"dataset       {dataset_id}")
    typer.echo(f"environment   {data.env_id}")
    typer.echo(f"episodes      {len(ret)}")
    ends = f"terminals {int(data.terminals.sum())}, timeouts {int(data.timeouts.sum())}"
    typer.echo(f"transitions   {len(data)} ({ends})")
    typer.echo(f"obs/act dims  {data.obs_dim} / {data.act_dim}")
    typer.echo(f"return        mean {ret.mean():.1f}  std {ret.std():.1f}  min {ret.min():.1f}  max {ret.max():.1f}")
    if data.ref_scores is not None:
        norm = normalized_score(ret, *data.ref_scores)
        typer.echo(f"reference     random {data.ref_scores[0]:.2f}  expert {data.ref_scores[1]:.2f}")
        typer.echo(f"normalized    mean {np.mean(norm):.1f}  std {np.std(norm):.1f}")
    else:
        typer.echo("reference     none stored (normalized scores unavailable)")
    recorded = {key.removeprefix("hybridrl_"): value for key, value in sorted(data.metadata.items())
                if key.startswith("hybridrl_")}
    if recorded:
        typer.echo("recorded by the factory:")
        for key, value in recorded.items():
            typer.echo(f"  {key:<26} {value}")


@app.command("algos")
@user_errors
def algos(name: Annotated[str | None, typer.Argument(help="A method: show its hyperparameters.")] = None) -> None:
    """List every registered method with its family, or one method's hyperparameters."""
    from hybridrl import registry

    if name is None:
        for spec in registry.load_all():
            typer.echo(f"{spec.name:<12} {spec.family:<11} {spec.summary}")
        typer.echo("\n`hybridrl algos NAME` shows a method's hyperparameters.")
        return
    from hybridrl.core.config import describe_fields

    specs = registry.find(name) or [registry.get(name)]  # get() explains an unknown name
    for spec in specs:
        typer.echo(f"{spec.name} ({spec.family}): {spec.summary}")
        typer.echo(f"hyperparameters ({spec.config.__name__}; {_SET_HINT[spec.family]}):")
        rows = describe_fields(spec.default_config())
        width = max(len(field) for field, _, _ in rows)
        shown = max(len(default) for _, default, _ in rows)
        for field, default, doc in rows:
            typer.echo(f"  {field:<{width}}  {default:<{shown}}  {doc}")


class _MethodGroup(typer.core.TyperGroup):
    """``hybridrl train NAME``: an unknown NAME gets the registry's one-line error, not click's usage box."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            from hybridrl import registry

            try:
                registry.get(args[0], families=registry.RL_FAMILIES)
            except KeyError as err:
                typer.echo(f"error: {err.args[0]}", err=True)
                raise typer.Exit(EXIT_BAD_INPUT) from None
            name = registry.get(args[0], families=registry.RL_FAMILIES).name
            return super().resolve_command(ctx, [name, *args[1:]])
        return super().resolve_command(ctx, args)


_SET_HINT = {
    "offline": "hybridrl train NAME --FIELD VALUE", "online": "hybridrl train NAME --FIELD VALUE",
    "hybrid": "hybridrl train NAME --FIELD VALUE", "preference": "hybridrl pref train NAME --FIELD VALUE",
    "selfplay": "hybridrl pref selfplay NAME --param FIELD=VALUE", "games": "hybridrl pref games --method NAME",
}
"""How a user sets a family's hyperparameters on the command line."""

train_app = typer.Typer(no_args_is_help=True, cls=_MethodGroup,
                        help="Train an RL method; rerunning the same command resumes it.")
app.add_typer(train_app, name="train")

_RUN_INPUTS = ("dataset", "env", "eval_env", "out", "param", "download")


def _option(name: str, help_text: str, annotation: Any, default: Any, *, shown: str | None = None,
            metavar: str | None = None) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    decls = (flag,) if annotation is not bool else (f"{flag}/--no-{name.replace('_', '-')}",)
    option = typer.Option(default, *decls, help=help_text, metavar=metavar,
                          show_default=shown if shown is not None else annotation is bool)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


def _metavar(annotation: Any) -> str:
    """What a value of a config field looks like on the command line."""
    import types
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _metavar(args[0])
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin is tuple:
        return "N,N,..."
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(annotation, "VALUE")


def _config_options(config: Any, skip: set[str]) -> list[inspect.Parameter]:
    """One option per field of a config dataclass: its docstring and default are the help text.

    Values arrive as text and go through the one override parser (``core.config.with_overrides``),
    which checks their types; flags (bool fields) are --NAME/--no-NAME.
    """
    import typing

    from hybridrl.core.config import describe_fields

    hints = typing.get_type_hints(type(config))
    params = []
    for field, default, doc in describe_fields(config):
        if field in skip:
            continue
        if isinstance(getattr(config, field), bool):
            params.append(_option(field, doc, bool, getattr(config, field)))
        else:
            params.append(_option(field, doc, Optional[str], None, shown=default,  # noqa: UP045
                                  metavar=_metavar(hints[field])))
    return params


def _train_command(spec: Any) -> Callable[..., None]:
    """``hybridrl train NAME``: the run options, the data and env inputs, and the method's hyperparameters."""
    from hybridrl.core.config import RunConfig

    run_defaults = RunConfig()
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    inputs = [
        _option("dataset", "Minari dataset id (offline and hybrid methods; with an online method: hybrid "
                "training on it).", Optional[str], None, metavar="ID"),  # noqa: UP045
        _option("env", "Training env: a task (hopper, walker2d...) or a Gymnasium id (online and hybrid "
                "methods; hybrid default: the env the dataset records).", Optional[str], None,  # noqa: UP045
                metavar="ENV"),
        _option("eval_env", "Evaluation env (default: the env the dataset records, else --env).",
                Optional[str], None, metavar="ENV"),  # noqa: UP045
        _option("out", "Run directory (default runs/METHOD-DATASET-sSEED).", Optional[Path], None,  # noqa: UP045
                metavar="DIR"),
        inspect.Parameter("param", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]],  # noqa: UP045
                          default=typer.Option(None, "--set", metavar="KEY=VALUE",
                                               help="Override a hyperparameter (repeatable).")),
        _option("download", "Download the dataset from Minari's server if it is missing.", bool, False),
    ]
    run_options = _config_options(run_defaults, skip=set())
    method_options = _config_options(spec.default_config(), skip=run_fields | set(_RUN_INPUTS))
    method_fields = [p.name for p in method_options]

    @user_errors
    def command(**kwargs: Any) -> None:
        from hybridrl.core.config import from_dict, parse_assignments, to_dict
        from hybridrl.runners import run

        given = {k: kwargs[k] for k in run_fields if kwargs.get(k) is not None}
        run_config = from_dict(RunConfig, {**to_dict(run_defaults), **given})
        overrides = {k: kwargs[k] for k in method_fields if kwargs.get(k) is not None
                     and kwargs[k] != getattr(spec.default_config(), k)}
        overrides.update(parse_assignments(kwargs["param"]))
        result = run(spec.name, run_config, dataset=kwargs["dataset"], env=kwargs["env"],
                     eval_env=kwargs["eval_env"], out_dir=kwargs["out"], overrides=overrides,
                     download=kwargs["download"])
        score = result["normalized_score"]
        where = " + ".join(x for x in (result["dataset"], result["env"]) if x)
        typer.echo(f"{result['algo']} on {where}: return {result['return_mean']:.1f}"
                   + (f", normalized score {score:.1f}" if score is not None else "") + f" ({result['out_dir']})")

    params = [*inputs, *run_options, *method_options]
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = f"{spec.summary}. Rerunning the same command resumes the run."
    return command


def _mount_train_commands() -> None:
    from hybridrl import registry

    for spec in registry.of_family(*registry.RL_FAMILIES).values():
        train_app.command(spec.name, help=f"{spec.summary} ({spec.family}).")(_train_command(spec))


_mount_train_commands()


@app.command("eval")
@user_errors
def eval_run(
    run_dir: Annotated[Path, typer.Argument(help="The --out of a training run.")],
    episodes: Annotated[int, typer.Option(help="Evaluation episodes.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the first episode (episode i uses SEED + i).")] = 20_000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Evaluate the last checkpoint of a run directory in the env its run evaluated in."""
    import torch

    from hybridrl.control.evaluate import evaluate
    from hybridrl.control.scores import d4rl_reference
    from hybridrl.runners import load_trained

    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    algo, record = load_trained(run_dir, device)
    env = record["eval_env"]
    ref = None
    if record.get("dataset"):
        from hybridrl.control.datasets import DatasetError, load

        try:
            ref = load(record["dataset"]).ref_scores
        except DatasetError:
            ref = None
    if ref is None:
        ref = d4rl_reference(env if isinstance(env, str) else env.id)
    dev = next(iter(algo.actor.parameters())).device

    def act(obs):
        return algo.act(torch.as_tensor(obs, dtype=torch.float32, device=dev)).cpu().numpy()

    result = evaluate(act, env, episodes=episodes, seed=seed, ref_scores=ref)
    line = f"{record['algo']} ({run_dir}): return {result.mean:.1f} ± {result.std:.1f}"
    if result.normalized_mean is not None:
        line += f", normalized {result.normalized_mean:.1f} ± {result.normalized_std:.1f}"
    typer.echo(line)


def _demo_command() -> Callable[..., None]:
    """``hybridrl demo``: the methods and budgets of the demo preset (bench/presets/demo.yaml), one
    ``--METHOD-steps`` option per method."""
    from hybridrl.bench.suites import preset

    runs = [(str(r["method"]), int(r["steps"])) for r in preset("demo")["runs"]]
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("task", keyword, annotation=str, default=typer.Option("hopper", "--task")),
        inspect.Parameter("transitions", keyword, annotation=int,
                          default=typer.Option(DEMO_TRANSITIONS, "--transitions")),
        *(inspect.Parameter(f"{name}_steps", keyword, annotation=int, default=typer.Option(
            steps, f"--{name.replace('_', '-')}-steps", help=f"Updates of {name}.")) for name, steps in runs),
        inspect.Parameter("seed", keyword, annotation=int, default=typer.Option(0, "--seed")),
        inspect.Parameter("device", keyword, annotation=str, default=typer.Option("auto", "--device")),
        inspect.Parameter("out", keyword, annotation=Path, default=typer.Option(Path("runs/demo"), "--out")),
        inspect.Parameter("threads", keyword, annotation=Optional[int],  # noqa: UP045
                          default=typer.Option(None, "--threads", help="torch CPU threads (default: one per core).")),
    ]

    @user_errors
    def command(**kwargs: Any) -> None:
        from hybridrl.control.datasets import local_dataset_ids
        from hybridrl.core.config import RunConfig
        from hybridrl.factory import FactoryConfig, make_dataset
        from hybridrl.factory import dataset_id as factory_dataset_id
        from hybridrl.runners import run

        task, seed, out = kwargs["task"], kwargs["seed"], kwargs["out"]
        dataset_id = factory_dataset_id(task, "random")
        if dataset_id not in local_dataset_ids():
            typer.echo(f"making {dataset_id} ({kwargs['transitions']} transitions of real {task} rollouts)")
            make_dataset(task, "random", config=FactoryConfig(transitions=kwargs["transitions"], preset="demo"),
                         seed=seed)
        rows = []
        for algo, _ in runs:
            steps = kwargs[f"{algo}_steps"]
            run_config = RunConfig(steps=steps, seed=seed, device=kwargs["device"], eval_every=0,
                                   log_every=min(500, steps), checkpoint_every=max(steps // 4, 1),
                                   threads=kwargs["threads"])
            result = run(algo, run_config, dataset=dataset_id, out_dir=out / f"{algo}-s{seed}")
            rows.append((algo, steps, result))
        typer.echo(f"\n{'method':<8} {'updates':>8} {'return':>16} {'normalized score':>18}   "
                   f"({dataset_id}, 10 episodes)")
        for algo, steps, result in rows:
            ev = result["eval"]
            typer.echo(f"{algo:<8} {steps:>8} {ev['mean']:>8.1f} ± {ev['std']:<6.1f} "
                       f"{ev['normalized_mean']:>9.1f} ± {ev['normalized_std']:<6.1f}")

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    names = " and ".join(name.upper() for name, _ in runs)
    command.__doc__ = f"Make a small dataset from real MuJoCo rollouts, train {names}, print their scores."
    return command


app.command("demo")(_demo_command())


def _csv(value: str | None, cast=str) -> list | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bad list {value!r}: give comma-separated values, e.g. 0,1,2") from None


@app.command("bench")
@user_errors
def bench(
    suite: Annotated[str, typer.Argument(help="quick, offline, online, preference, nash-games, throughput or custom.")],
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods (filter, or the custom grid's).")] = None,
    datasets: Annotated[str | None, typer.Option(help="Comma-separated datasets (filter or custom; as a filter, "
                                                      "also the task of an online run).")] = None,
    envs: Annotated[str | None, typer.Option(help="Comma-separated envs / tasks (filter or custom; an online "
                                                  "method given datasets too trains hybrid).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (filter; custom default 0).")] = None,
    steps: Annotated[int | None, typer.Option(help="Override every run's budget.")] = None,
    param: Annotated[list[str] | None,
                     typer.Option("--set", help="Hyperparameter or run setting of every run: KEY=VALUE.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Custom grids: steps between evaluations.")] = None,
    eval_episodes: Annotated[int | None, typer.Option(help="Custom grids: episodes per evaluation.")] = None,
    out: Annotated[Path | None, typer.Option(help="Grid directory (default runs/bench/SUITE).")] = None,
    workers: Annotated[int | None, typer.Option(help="Runs in parallel (default: one per core, at most 8).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per run (default: cores / workers).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    ray: Annotated[bool, typer.Option("--ray", help="Run on a local Ray instance (pip install 'hybridrl[ray]').")]
    = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (e.g. auto or ray://host:10001).")]
    = None,
    list_runs: Annotated[bool, typer.Option("--list", help="Print the runs and exit.")] = False,
    report: Annotated[bool, typer.Option(help="Build OUT/report/report.md at the end.")] = True,
) -> None:
    """Run a benchmark suite as a resumable grid (finished runs are kept), then report it."""
    from hybridrl.bench import suites
    from hybridrl.bench.runner import run_grid

    method_list, dataset_list, env_list, seed_list = _csv(methods), _csv(datasets), _csv(envs), _csv(seeds, int)
    if suite == "custom":
        specs = suites.custom(method_list or [], dataset_list or [], seed_list or [0], steps or 1_000_000,
                              eval_every=eval_every or 0, eval_episodes=eval_episodes or 10, envs=env_list)
    else:
        specs = suites.select(suites.suite(suite), methods=method_list, datasets=dataset_list, envs=env_list,
                              seeds=seed_list, steps=steps)
    if param:
        specs = suites.with_overrides(specs, param)
    if list_runs:
        for spec in specs:
            typer.echo(f"{spec.run_id}  steps={spec.steps}" + (f"  {spec.overrides}" if spec.overrides else ""))
        return
    out = out or Path("runs") / "bench" / suite
    result = run_grid(specs, out, workers=workers, threads=threads, device=device, ray=ray, ray_address=ray_address,
                      echo=typer.echo)
    if report:
        _print_report(out)
    if result.failed:
        typer.echo(f"error: {len(result.failed)} run(s) failed (see error.txt in their directories); "
                   "rerun the same command to retry them", err=True)
        raise typer.Exit(EXIT_DIVERGED)


def _print_report(runs_dir: Path, out: Path | None = None) -> None:
    from hybridrl.bench.report import build_report

    typer.echo("")
    typer.echo(build_report(runs_dir, out).table_text())


@app.command("report")
@user_errors
def report_command(
    runs_dir: Annotated[Path, typer.Argument(help="A grid directory written by `hybridrl bench`.")],
    out: Annotated[Path | None, typer.Option(help="Report directory (default RUNS_DIR/report).")] = None,
) -> None:
    """Tables, aggregate statistics and plots of a grid's runs, in one report.md."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir} is not a directory: pass the --out of a `hybridrl bench` run")
    _print_report(runs_dir, out)


def _mount_optional() -> None:
    """Mount the language-model commands when their module is there (it imports no heavy library)."""
    try:
        from hybridrl.preference.cli import app as pref_app
    except ImportError:
        return
    app.add_typer(pref_app, name="pref")


_mount_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
