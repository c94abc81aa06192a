"""One line for every error a user can act on, and the exit codes of every ``hybridrl`` command.

Exit 2 for bad input (names, numbers, paths, data, a run directory in use or holding another run),
1 when training diverged (its last good checkpoint is kept) or a behaviour policy could not be made,
130 on Ctrl-C (what is saved, and how to resume, is said on that line).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def first_line(err: BaseException) -> str:
    """The first line of an error's message (a KeyError's message without its quotes)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    text = str(text).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn the library's errors about user input into one stderr line and an exit code."""
    from hybridrl.core.session import DivergenceError, Interrupted

    try:
        yield
    except Interrupted as err:
        typer.echo(first_line(err), err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:  # outside a training session (loading, building): no progress to report
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except DivergenceError as err:
        typer.echo(f"error: {first_line(err)}", err=True)
        raise typer.Exit(EXIT_DIVERGED) from None
    except BrokenPipeError:  # whoever reads the output stopped reading (`| head`): not the user's error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        raise typer.Exit(0) from None
    except Exception as err:
        from hybridrl.bench.bundled import BundleError
        from hybridrl.factory import BehaviourPolicyError

        if isinstance(err, (BehaviourPolicyError, BundleError)):
            typer.echo(f"error: {first_line(err)}", err=True)
            raise typer.Exit(EXIT_DIVERGED) from None
        # DatasetError and RunDirectoryError are ValueErrors
        if isinstance(err, (ValueError, KeyError, FileNotFoundError, OSError)):
            typer.echo(f"error: {first_line(err)}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        raise


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``one_line_errors`` around a command."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_line_errors():
            return fn(*args, **kwargs)

    return wrapper
