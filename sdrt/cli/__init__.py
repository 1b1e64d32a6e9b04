"""The `sdrt` command. Importing it loads no export code, so runtime commands start fast.
One module per command group: generate (generate, tokenize), models (export, build, verify,
info), bench and serve."""

from __future__ import annotations

import sys

import click

from sdrt import __version__
from sdrt.errors import SdrtError


class SdrtGroup(click.Group):
    """Turns sdrt's own errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SdrtError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)
        except click.UsageError as error:  # a bad option value: one line, not click's usage block
            name = f" (see sdrt {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else ""
            click.echo(f"error: {error.format_message()}{name}", err=True)
            sys.exit(error.exit_code)


@click.group(cls=SdrtGroup)
@click.version_option(__version__, prog_name="sdrt")
def main() -> None:
    """sdrt: Stable Diffusion inference on exported ONNX / TensorRT engines."""


from sdrt.cli import bench, generate, models, serve  # noqa: E402,F401  (registers the commands)

if __name__ == "__main__":
    main()
