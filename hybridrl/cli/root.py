"""The root ``hybridrl`` app: every group of commands mounted in one place."""

from __future__ import annotations

import typer

from hybridrl.cli import bench, data, pref, train

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Offline, hybrid and preference-based policy optimization.")
app.add_typer(data.app, name="data")
train.register(app)
bench.register(app)
app.add_typer(pref.app, name="pref")


def main() -> None:
    app()
