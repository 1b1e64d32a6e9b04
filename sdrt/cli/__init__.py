"""The `sdrt` command. Importing it loads no export code, so runtime commands start fast.
One module per command group: generate, tokenize, models (export, build, verify,
info), bench and serve."""

from __future__ import annotations

import sys

import click

from sdrt import __version__
from sdrt.errors import SdrtError

#: The modules that register the commands, imported when a command is looked up: an early
#: Ctrl-C then meets sdrt's handler rather than Python's traceback.
COMMAND_MODULES = ("bench", "generate", "models", "serve", "tokenize")
STOPPED = "stopped by a signal; no image was written"


class SdrtGroup(click.Group):
    """Turns sdrt's own errors into one line on stderr and a non-zero exit, never a traceback;
    Ctrl-C and SIGTERM at any moment into one line and exit 130 (sdrt.cli.signals)."""

    def main(self, *args, **kwargs):
        from sdrt.cli.signals import SIGNAL_EXIT_CODE, Interrupted, exit_on_signals

        try:
            with exit_on_signals():
                return super().main(*args, **kwargs)
        except Interrupted:
            click.echo(f"error: {STOPPED}", err=True)
            sys.exit(SIGNAL_EXIT_CODE)

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        _register_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        from sdrt.cli.signals import SIGNAL_EXIT_CODE, Stopped, received

        try:
            return super().invoke(ctx)
        except SdrtError as error:
            if received.is_set() and error.exit_code != SIGNAL_EXIT_CODE:
                error = Stopped(STOPPED)  # what the interrupted library made of the signal
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)
        except click.UsageError as error:  # a bad option value: one line, not click's usage block
            name = f" (see sdrt {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else ""
            click.echo(f"error: {error.format_message()}{name}", err=True)
            sys.exit(error.exit_code)
        except Exception:
            if not received.is_set():
                raise
            click.echo(f"error: {STOPPED}", err=True)  # a library's report of the interruption
            sys.exit(SIGNAL_EXIT_CODE)


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"sdrt.cli.{name}")


@click.group(cls=SdrtGroup)
@click.version_option(__version__, prog_name="sdrt")
def main() -> None:
    """sdrt: Stable Diffusion inference on exported ONNX / TensorRT engines."""


if __name__ == "__main__":
    main()
