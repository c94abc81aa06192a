"""``hybridrl algos``, ``hybridrl train NAME`` and ``hybridrl eval``.

``train`` has one command per registered RL method, whose options are generated from the run config
and the method's config dataclass: each field's docstring and default are its help text, and values
go through the one override parser (``core.config.with_overrides``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.core

from hybridrl.cli.errors import EXIT_BAD_INPUT, user_errors


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

_RUN_INPUTS = ("dataset", "env", "eval_env", "out", "param", "download", "preset")


def _option(name: str, help_text: str, annotation: Any, default: Any, *, shown: str | None = None,
            metavar: str | None = None) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    is_flag = annotation in (bool, Optional[bool])  # noqa: UP045
    decls = (flag,) if not is_flag else (f"{flag}/--no-{name.replace('_', '-')}",)
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
            # None until typed, so that a typed flag overrides a preset even when it equals the default.
            params.append(_option(field, doc, Optional[bool], None, shown=default))  # noqa: UP045
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
        _option("preset", "Start from the method's preset for the dataset when one ships "
                "(hybridrl/bench/presets/methods/METHOD/TASK-QUALITY.yaml: the paper's per-task settings, "
                "as the benchmarks run them); options and --set override it.", bool, True),
    ]
    run_options = _config_options(run_defaults, skip=set())
    method_options = _config_options(spec.default_config(), skip=run_fields | set(_RUN_INPUTS))
    method_fields = [p.name for p in method_options]

    @user_errors
    def command(**kwargs: Any) -> None:
        from hybridrl.core.config import from_dict, parse_assignments, to_dict
        from hybridrl.runners import check_budget, run

        given = {k: kwargs[k] for k in run_fields if kwargs.get(k) is not None}
        run_config = from_dict(RunConfig, {**to_dict(run_defaults), **given})
        overrides = _preset_values(spec.name, kwargs["dataset"]) if kwargs["preset"] else {}
        overrides.update({k: kwargs[k] for k in method_fields if kwargs.get(k) is not None})
        overrides.update(parse_assignments(kwargs["param"]))
        check_budget(spec.name, run_config, dataset=kwargs["dataset"], env=kwargs["env"], overrides=overrides)
        _install_if_bundled(kwargs["dataset"])
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


def _preset_values(method: str, dataset: str | None) -> dict[str, Any]:
    """The method's per-dataset preset (empty when none ships), announced with its path."""
    from hybridrl.bench.suites import method_preset, method_preset_path

    path = method_preset_path(method, dataset)
    if path is None:
        return {}
    import hybridrl

    package_root = Path(hybridrl.__file__).parent.parent
    shown = path.relative_to(package_root) if path.is_relative_to(package_root) else path
    typer.echo(f"preset: {shown} (--no-preset to start from the defaults)")
    return method_preset(method, dataset)


def _install_if_bundled(dataset: str | None) -> None:
    """A dataset that ships with the package (the quick suite's) is copied into the local store on first
    use, so it trains by its id whether or not a bench ran before."""
    from hybridrl.bench import bundled

    if dataset in bundled.DATASETS:
        bundled.install_datasets()


def register(app: typer.Typer) -> None:
    """Add ``algos``, ``train`` (one command per registered RL method) and ``eval`` to ``app``."""
    from hybridrl import registry

    app.command("algos")(user_errors(algos))
    for spec in registry.of_family(*registry.RL_FAMILIES).values():
        train_app.command(spec.name, help=f"{spec.summary} ({spec.family}).")(_train_command(spec))
    app.add_typer(train_app, name="train")
    app.command("eval")(eval_run)


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
