"""``hybridrl data``: make, list and inspect Minari datasets."""

from __future__ import annotations

from typing import Annotated

import typer

from hybridrl.cli.errors import user_errors

app = typer.Typer(no_args_is_help=True, help="Make, list and inspect Minari datasets.")


@app.command("list")
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


@app.command("make")
@user_errors
def data_make(
    task: Annotated[str, typer.Argument(help="hopper, halfcheetah or walker2d")],
    quality: Annotated[str, typer.Argument(help="random, medium, medium-replay, expert or medium-expert")],
    small: Annotated[bool, typer.Option("--small", help="Laptop preset: 100k transitions, 300k SAC steps.")] = False,
    transitions: Annotated[int | None, typer.Option(help="Transitions per rolled-out dataset (D4RL: 1M).")] = None,
    sac_steps: Annotated[int | None, typer.Option(help="SAC environment steps for the expert policy.")] = None,
    sac_hidden: Annotated[str | None, typer.Option(help="Behaviour SAC's hidden widths, e.g. 256,256.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the behaviour policy's training and the rollouts.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (SAC training).")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
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


@app.command("mix")
@user_errors
def data_mix(
    sources: Annotated[list[str], typer.Argument(help="Two datasets or more (Minari ids) of the same env.")],
    out_id: Annotated[str, typer.Option("--out", help="Id of the mixed dataset, e.g. hybridrl/hopper/mixed-v0.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset.")] = False,
    download: Annotated[bool, typer.Option("--download", help="Fetch sources missing from the local store.")] = False,
) -> None:
    """Concatenate datasets' episodes (whole, as recorded) into a new Minari dataset.

    The sources must record the same env, action space and reference scores; the new dataset
    records its sources (ids, episodes, transitions) in its metadata (`data info` shows them).
    """
    from hybridrl.control.mixing import mix

    result = mix(sources, out_id, overwrite=overwrite, download=download)
    for source in result["sources"]:
        typer.echo(f"  {source['id']}: {source['episodes']} episodes, {source['transitions']} transitions")
    typer.echo(f"wrote {out_id}: {result['episodes']} episodes, {result['transitions']} transitions")


@app.command("info")
@user_errors
def data_info(
    dataset_id: Annotated[str, typer.Argument(help="Minari dataset id, e.g. hybridrl/hopper/random-v0.")],
    download: Annotated[bool, typer.Option(help="Download it from Minari's server if it is missing.")] = False,
) -> None:
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
        typer.echo("recorded by hybridrl (factory or mix):")
        for key, value in recorded.items():
            typer.echo(f"  {key:<26} {value}")
