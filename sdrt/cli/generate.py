"""`sdrt generate` and `sdrt tokenize`."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import click

from sdrt.cli import main
from sdrt.cli.controlnet_options import control_units, controlnet_options
from sdrt.cli.default_model import resolve_model
from sdrt.cli.image_options import hires_fix, image_options, mask_options, styled
from sdrt.cli.progress import StepProgress
from sdrt.cli.prompt_options import embedding_options, embedding_sources, lora_options, prompt_options
from sdrt.cli.sdxl_options import resolve_refiner_switch, sdxl_options, size_conditioning
from sdrt.cli.signals import stop_on_signals
from sdrt.cli.types import THREADS, FiniteFloat
from sdrt.errors import SdrtError
from sdrt.runtime.engines import BACKEND_NAMES, DEFAULT_BACKEND
from sdrt.runtime.request import DEFAULT_GUIDANCE, DEFAULT_STEPS
from sdrt.runtime.schedulers import DEFAULT_SAMPLER, DEFAULT_SCHEDULE, SAMPLER_NAMES, SCHEDULE_NAMES


@main.command()
@click.argument("prompts", nargs=-1, required=True)
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Model folder (with a tokenizer/ inside) or a tokenizer folder.",
)
@click.option(
    "--steps",
    default=None,
    type=click.IntRange(min=1),
    help="Show the text of each step's part of a [from:to:when] or [a|b] schedule of this many steps.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the chunks' ids, tokens and weights as JSON.")
@prompt_options
@embedding_options
def tokenize(
    prompts: tuple[str, ...],
    model_dir: str,
    steps: int | None,
    as_json: bool,
    emphasis: str,
    clip_skip: int,
    plain_prompt: bool,
    embedding_dirs,
    embedding_files,
) -> None:
    """Print each PROMPT's chunks of text encoder ids, with the weights emphasis gives them
    (and, with a model folder's embeddings, the ids their trigger words become)."""
    from sdrt.runtime.manifest import MANIFEST_NAME, Manifest
    from sdrt.runtime.text.embeddings import EmbeddingSource
    from sdrt.runtime.text.encoders import TextEncoders
    from sdrt.runtime.text.prompts.chunks import text_chunks
    from sdrt.runtime.text.prompts.emphasis import emphasis_mode
    from sdrt.runtime.text.prompts.options import TextOptions
    from sdrt.runtime.text.prompts.schedule import prompt_schedule
    from sdrt.runtime.text.tokenizer import ClipTokenizer

    folder = Path(model_dir)
    mode = emphasis_mode("None" if plain_prompt else emphasis)
    sources = [EmbeddingSource.parse(s) for s in embedding_sources(embedding_dirs, embedding_files)]
    names: dict[int, str] = {}
    if (folder / MANIFEST_NAME).is_file():  # a malformed model folder is one line here too
        encoders = TextEncoders.load(folder, Manifest.load(folder), sources)  # SDXL: the first encoder's
        tokenizer = encoders.tokenizers[0]
        if encoders.tables[0] is not None:  # an embedding's ids show as NAME#N
            for triggers in encoders.tables[0].by_first.values():
                names.update({i: f"<{t.name}#{n}>" for t in triggers for n, i in enumerate(t.ids)})
        chunker = lambda text: encoders.chunks(text, TextOptions(mode, clip_skip))  # noqa: E731
    elif sources:
        raise SdrtError("--embeddings needs an exported model folder (its manifest says the vectors' widths)")
    else:
        tokenizer = ClipTokenizer.from_folder(folder)
        chunker = lambda text: text_chunks(text, mode, tokenizer)  # noqa: E731
    rows = []
    for prompt in prompts:
        schedule = prompt_schedule(prompt, steps) if steps and not plain_prompt else [(steps, prompt)]
        for last_step, text in schedule:
            chunks = chunker(text)
            rows.append(
                {
                    "prompt": prompt,
                    "text": text,
                    "last_step": last_step,
                    "token_count": chunks.token_count,
                    "embeddings": list(chunks.embeddings),
                    "chunks": [
                        {
                            "input_ids": ids.tolist(),
                            "tokens": [names.get(int(i)) or tokenizer.decode([i]) for i in ids],
                            "weights": [round(float(w), 6) for w in weights],
                        }
                        for ids, weights in zip(chunks.ids, chunks.weights)
                    ],
                }
            )
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        if row["last_step"] is not None:
            click.echo(f"to step {row['last_step']}: {row['text']}")
        for number, chunk in enumerate(row["chunks"], start=1):
            shown = chunk["input_ids"].index(tokenizer.eos_id) + 1  # through the end token: the rest is padding
            click.echo(f"chunk {number}/{len(row['chunks'])} ({row['token_count']} tokens in all):")
            click.echo(" ".join(str(i) for i in chunk["input_ids"][:shown]))
            words = [
                token if weight == 1 else f"({token}:{weight:g})"
                for token, weight in zip(chunk["tokens"][:shown], chunk["weights"][:shown])
            ]
            click.echo(" ".join(words))


# Fallbacks where the file system does not say (Linux's values).
NAME_MAX, PATH_MAX = 255, 4096


def _limit(folder: Path, name: str, fallback: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return fallback


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long to look up: check_output says so
        return False


def check_output(path: Path) -> None:
    """Everything that would make writing `path` fail, checked before any generation."""
    folder = path.parent
    if _is_dir(path):
        raise SdrtError(f"cannot write {path}: it is a folder")
    if not _is_dir(folder):
        raise SdrtError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise SdrtError(f"cannot write {path}: folder {folder} is not writable")
    name_bytes, name_max = len(os.fsencode(path.name)), _limit(folder, "PC_NAME_MAX", NAME_MAX)
    if name_bytes > name_max:
        raise SdrtError(
            f"cannot write {path.name[:40]}...: the file name is {name_bytes} bytes, "
            f"more than the {name_max} this file system allows"
        )
    path_bytes, path_max = len(os.fsencode(str(path.absolute()))), _limit(folder, "PC_PATH_MAX", PATH_MAX)
    if path_bytes >= path_max:
        raise SdrtError(f"cannot write the output: its path is {path_bytes} bytes, more than {path_max - 1}")


def output_paths(out: str | None, seed: int, count: int) -> list[Path]:
    """Where the images go: --out (a file name, or an existing folder to put sdrt-SEED.png in),
    with -1, -2, ... added for several images; every path checked first."""
    default = Path(f"sdrt-{seed}.png")
    base = Path(out) / default if out and _is_dir(Path(out)) else Path(out) if out else default
    if base.suffix.lower() != ".png":
        base = base.with_suffix(base.suffix + ".png") if base.suffix else base.with_suffix(".png")
    paths = [base] if count == 1 else [base.with_name(f"{base.stem}-{i}{base.suffix}") for i in range(1, count + 1)]
    for path in paths:
        check_output(path)
    return paths


@main.command()
@click.argument("prompt")
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(),
    help="An export folder, or a diffusers folder, .safetensors/.ckpt checkpoint or hub id (exported once "
    "into the cache) [default: $SDRT_MODEL, else SD 1.5 from the hub].",
)
@click.option("--negative-prompt", default=None, help="What the image should not show.")
@click.option("--steps", default=DEFAULT_STEPS, show_default=True, type=int, help="Denoising steps.")
@click.option(
    "--guidance",
    default=DEFAULT_GUIDANCE,
    show_default=True,
    type=FiniteFloat(0),
    help="Classifier-free guidance scale.",
)
@click.option("--seed", default=None, type=int, help="Random seed (same image as diffusers with this seed).")
@click.option("--height", default=None, type=int, help="Image height (default: the model's native size).")
@click.option("--width", default=None, type=int, help="Image width (default: the model's native size).")
@click.option("--num-images", default=1, show_default=True, type=int, help="Images to generate.")
@click.option(
    "--sampler",
    "--scheduler",
    "sampler",
    default=DEFAULT_SAMPLER,
    show_default=True,
    metavar="NAME",
    help=f"Sampler: {', '.join(SAMPLER_NAMES)} (--scheduler is its earlier name).",
)
@click.option(
    "--schedule",
    default=DEFAULT_SCHEDULE,
    show_default=True,
    type=click.Choice(SCHEDULE_NAMES),
    help="Schedule type (A1111's): the noise levels' spacing, for the samplers that take it.",
)
@click.option(
    "--backend",
    default=DEFAULT_BACKEND,
    show_default=True,
    type=click.Choice(BACKEND_NAMES),
    help="cpu or cuda (ONNX Runtime), or tensorrt (engines from `sdrt build`).",
)
@click.option("--threads", default=None, type=THREADS, help="CPU threads per engine (default: all cores).")
@click.option("--cuda-graph", is_flag=True, help="With --backend cuda: capture the UNet as a CUDA graph per shape.")
@click.option("--init-image", default=None, help="Image-to-image: start from this image.")
@click.option(
    "--mask",
    "mask_image",
    default=None,
    help="Inpainting: white (or opaque) = repaint, black = keep; needs --init-image.",
)
@click.option(
    "--strength",
    default=None,
    type=FiniteFloat(0, 1, low_open=True),
    help="How much to change the init image, in (0, 1] [default: 0.8, inpainting 1.0].",
)
@click.option(
    "--vae",
    "vae_decoder",
    default="full",
    show_default=True,
    type=click.Choice(["full", "tiny"]),
    help="Decode with the full VAE or the tiny one (an export made with --tiny-vae).",
)
@click.option(
    "--preview",
    default=None,
    type=click.IntRange(min=1),
    metavar="N",
    help="Every N steps, write the first image so far as OUT-step-K.png (tiny VAE when exported).",
)
@click.option("--out", default=None, help="Output PNG (default: sdrt-SEED.png; -N is added for several).")
@click.option("--quiet", is_flag=True, help="No progress bar or warnings.")
@click.option("--json", "as_json", is_flag=True, help="Print parameters, output paths and timings as JSON.")
@image_options
@sdxl_options
@prompt_options
@embedding_options
@lora_options
@controlnet_options
def generate(
    prompt,
    model_dir,
    negative_prompt,
    steps,
    guidance,
    seed,
    height,
    width,
    num_images,
    sampler,
    schedule,
    backend,
    threads,
    cuda_graph,
    init_image,
    mask_image,
    strength,
    vae_decoder,
    preview,
    out,
    quiet,
    as_json,
    refiner,
    refiner_switch,
    emphasis,
    clip_skip,
    plain_prompt,
    embedding_dirs,
    embedding_files,
    loras,
    lora_dir,
    lora_cache_mb,
    controlnets,
    control_images,
    canny_thresholds,
    controlnet_dir,
    control_starts,
    control_ends,
    control_modes,
    preprocessors,
    **sdxl,
) -> None:
    """Generate images for PROMPT with an exported model (from --init-image: image-to-image;
    with --mask too: inpainting). SDXL: --refiner and the size conditioning. LoRAs: --lora,
    or <lora:NAME:WEIGHT> in PROMPT with --lora-dir. ControlNets: --controlnet with
    --control-image."""
    started = time.perf_counter()
    from sdrt.runtime.imaging.png_info import format_parameters, save_png
    from sdrt.runtime.pipeline import Pipeline
    from sdrt.runtime.request import MAX_SEED, GenerationRequest

    switch = resolve_refiner_switch(refiner, refiner_switch)
    units = control_units(
        controlnets,
        control_images,
        canny_thresholds,
        control_starts=control_starts,
        control_ends=control_ends,
        control_modes=control_modes,
        preprocessors=preprocessors,
    )
    conditioning = size_conditioning(sdxl)
    hires, masking, deepcache, eta = hires_fix(sdxl), mask_options(sdxl), sdxl.pop("deepcache"), sdxl.pop("eta")
    prompt, negative_prompt = styled(prompt, negative_prompt, sdxl)
    if masking is not None and mask_image is None:
        raise click.UsageError(
            "--mask-blur, --invert-mask, --inpaint-area, --mask-padding, --mask-fill and --paste-back need --mask"
        )
    if seed is None:  # drawn here, so that the output names are known (and checked) first
        seed = random.SystemRandom().randint(0, MAX_SEED)
    paths = output_paths(out, seed, num_images)
    model_dir = resolve_model(model_dir, quiet=quiet or as_json)
    pipeline = Pipeline.load(
        model_dir,
        backend=backend,
        threads=threads,
        cuda_graph=cuda_graph,
        refiner=refiner,
        progress=None if quiet else lambda line: click.echo(line, err=True),
        embeddings=embedding_sources(embedding_dirs, embedding_files),
        lora_dir=lora_dir,
        lora_cache_mb=lora_cache_mb,
        controlnet_dir=controlnet_dir,
    )
    if not quiet:
        for name, reason in pipeline.text_encoders.embeddings.skipped.items():
            click.echo(f"warning: embedding {name} skipped: {reason}", err=True)
    load_seconds = time.perf_counter() - started
    first_step: list[float] = []
    bar = StepProgress(enabled=not quiet and not as_json)

    def progress(step: int, total: int) -> None:
        if not first_step:
            first_step.append(time.perf_counter() - started)
        bar(step, total)

    request = GenerationRequest(
        prompt,
        negative_prompt=negative_prompt,
        steps=steps,
        guidance_scale=guidance,
        seed=seed,
        height=height,
        width=width,
        num_images=num_images,
        sampler=sampler,
        schedule=schedule,
        init_image=init_image,
        mask_image=mask_image,
        strength=strength,
        size_conditioning=conditioning,
        refiner_switch=switch,
        emphasis=emphasis,
        clip_skip=clip_skip,
        plain_prompt=plain_prompt,
        loras=list(loras),
        controlnets=units,
        vae=vae_decoder,
        hires=hires,
        mask_options=masking,
        deepcache=deepcache,
        eta=eta,
    )
    previews = None
    if preview is not None:
        from sdrt.runtime.features.preview import Preview

        def write_preview(step: int, total: int, images) -> None:
            images[0].save(paths[0].with_name(f"{paths[0].stem}-step-{step}.png"))

        previews = Preview(preview, write_preview)
    with stop_on_signals() as stop:
        result = pipeline.run(request, progress=progress, preview=previews, cancel=stop)
    if not quiet:
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
    stage = time.perf_counter()
    for position, (image, path) in enumerate(zip(result.images, paths), start=1):
        save_png(image, path, format_parameters(prompt, result.parameters, position if len(paths) > 1 else None))
    timings = dict(
        result.timings,
        load=load_seconds,
        png=time.perf_counter() - stage,
        start_to_first_step=first_step[0] if first_step else None,
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "parameters": result.parameters,
                    "outputs": [str(p) for p in paths],
                    "timings": timings,
                    "warnings": result.warnings,
                }
            )
        )
    elif not quiet:
        for path in paths:
            click.echo(str(path))
