"""The `sdrt` command. Importing it loads no export code, so runtime commands start fast."""

from __future__ import annotations

import json
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


@click.group(cls=SdrtGroup)
@click.version_option(__version__, prog_name="sdrt")
def main() -> None:
    """sdrt: Stable Diffusion inference on exported ONNX / TensorRT engines."""


@main.command()
@click.argument("prompts", nargs=-1, required=True)
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Model folder (with a tokenizer/ inside) or a tokenizer folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print ids, lengths and dropped text as JSON.")
def tokenize(prompts: tuple[str, ...], model_dir: str, as_json: bool) -> None:
    """Print the text encoder's input ids for each PROMPT."""
    from sdrt.runtime.tokenizer import ClipTokenizer

    tokenizer = ClipTokenizer.from_folder(model_dir)
    batch = tokenizer.encode(list(prompts))
    if as_json:
        rows = [
            {"prompt": p, "input_ids": ids.tolist(), "length": n, "dropped_text": d}
            for p, ids, n, d in zip(prompts, batch.input_ids, batch.lengths, batch.dropped_text)
        ]
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for prompt, ids, length, dropped in zip(prompts, batch.input_ids, batch.lengths, batch.dropped_text):
        click.echo(" ".join(str(i) for i in ids[:length]))
        if dropped:
            click.echo(
                f"warning: the prompt is longer than {tokenizer.max_length - 2} tokens; "
                f"this part was dropped: {dropped!r}",
                err=True,
            )


@main.command()
@click.argument("model")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: engines/NAME, NAME from MODEL).")
@click.option("--config", "config_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="For a single-file checkpoint offline: a diffusers folder with matching configs.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="UNet and text encoder precision (normalizations and softmax stay fp32).")
@click.option("--vae-precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="VAE precision: the fp16 SD VAE can overflow into NaN/black images.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Execution provider the graphs are made for.")
@click.option("--optimize", is_flag=True,
              help="Apply the target's graph optimizations (CUDA: fused attention, GroupNorm, GELU).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export in --out.")
def export(model: str, out_dir: str | None, config_dir: str | None, precision: str, vae_precision: str,
           target: str, optimize: bool, overwrite: bool) -> None:
    """Export MODEL (diffusers folder, .safetensors/.ckpt checkpoint or hub id) to validated
    ONNX with a manifest.json, in the layout OnnxStableDiffusionPipeline reads."""
    from pathlib import Path

    try:
        from sdrt.export.exporter import ExportOptions, export_model
    except ImportError as error:
        raise SdrtError(f"export needs the export extra ({error.name} is missing): pip install 'sdrt[export]'")
    if out_dir is None:
        out_dir = str(Path("engines") / Path(model.rstrip("/")).stem.replace("/", "--"))
    options = ExportOptions(precision=precision, vae_precision=vae_precision, target=target, optimize=optimize)
    manifest = export_model(model, out_dir, config=config_dir, options=options, overwrite=overwrite,
                            progress=lambda line: click.echo(line, err=True))
    click.echo(f"exported {len(manifest.components)} components to {out_dir}")


if __name__ == "__main__":
    main()
