"""The `sagan` command line: the Typer app, its error handling and the command modules registered on it.

The CLI is a leaf: it imports the library, and nothing in the library imports it. Each command module
exposes `register(app)`; adding a command is one more entry in COMMAND_MODULES.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.core import TyperGroup

from .. import __version__
from ..errors import EXIT_FAILURE, EXIT_SIGINT, EXIT_USAGE, SaganError
from ..runtime import tune_cpu_allocator
from . import attention, evaluate, interpolate, report, sample, train
from .console import error

COMMAND_MODULES = (train, sample, interpolate, evaluate, attention, report)  # each registers its command(s) on `app`


def debug_enabled() -> bool:
    """Tracebacks are shown only with --debug or SAGAN_DEBUG=1."""
    return os.environ.get("SAGAN_DEBUG", "") not in ("", "0")


# Typer >= 0.29 vendors click; older releases use the click package. Find its UsageError either way.
# Typed Any: mypy cannot know which click it is, and its instances have ctx and format_message().
ClickUsageError: type[Any] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class SaganGroup(TyperGroup):
    """Turns expected failures into one line on stderr and an exit code, for app() and CliRunner alike."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SaganError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except ClickUsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            error(f"{exc.format_message()}{hint}")
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            # Ctrl-C outside the training loop's own handler (loading data, writing images): nothing to save.
            error("interrupted")
            raise typer.Exit(EXIT_SIGINT) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if debug_enabled():
                raise
            error(f"unexpected {exc.__class__.__name__}: {exc} (run with --debug for a traceback)")
            raise typer.Exit(EXIT_FAILURE) from None


app = typer.Typer(
    cls=SaganGroup,
    name="sagan",
    help="Train Self-Attention GANs, sample and interpolate from them, and score them with FID / IS / KID.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"sagan {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show Python tracebacks for unexpected errors (or set SAGAN_DEBUG=1)."
    ),
) -> None:
    """Train Self-Attention GANs, sample and interpolate from them, and score them with FID / IS / KID.

    Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 quality gate failed (evaluate),
    130/143 interrupted by SIGINT/SIGTERM after saving a checkpoint.
    """
    if debug:
        os.environ["SAGAN_DEBUG"] = "1"
    tune_cpu_allocator()  # large activations reused instead of re-faulted every step (docs/performance.md)


for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
