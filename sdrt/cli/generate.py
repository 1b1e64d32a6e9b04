"""`sdrt generate` (`sdrt tokenize` is in tokenize.py, output paths in outputs.py)."""

from __future__ import annotations

import json
import random
import time

import click

from sdrt.cli import main
from sdrt.cli.a1111_options import a1111_noise_settings, a1111_options
from sdrt.cli.controlnet_options import control_units, controlnet_options
from sdrt.cli.default_model import resolve_model
from sdrt.cli.from_png import from_png_options
from sdrt.cli.image_options import hires_fix, image_options, mask_options, styled
from sdrt.cli.kontext_options import kontext_options, kontext_settings
from sdrt.cli.outputs import check_output, output_paths
from sdrt.cli.progress import StepProgress
from sdrt.cli.prompt_options import embedding_options, embedding_sources, lora_options, prompt_options
from sdrt.cli.sampler_settings_options import sampler_settings, sampler_settings_options
from sdrt.cli.sd3_options import sd3_options, skip_layer_guidance
from sdrt.cli.sdxl_options import resolve_refiner_switch, sdxl_options, size_conditioning
from sdrt.cli.signals import stop_on_signals
from sdrt.cli.types import THREADS, FiniteFloat
from sdrt.cli.zimage_options import zimage_options, zimage_settings
from sdrt.runtime.engines import BACKEND_NAMES, DEFAULT_BACKEND
from sdrt.runtime.request import DEFAULT_GUIDANCE, DEFAULT_STEPS
from sdrt.runtime.schedulers import (
    COMFY_SCHEDULER_NAMES,
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    K_SAMPLER_NAMES,
    K_SCHEDULE_NAMES,
    SAMPLER_NAMES,
    SCHEDULE_NAMES,
    resolve_sampler_name,
)


@main.command()
@click.argument("prompt", required=False)
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
    default=None,
    type=FiniteFloat(0),
    help=f"Classifier-free guidance scale [default: {DEFAULT_GUIDANCE}; FLUX.1 dev: its distilled guidance, 3.5].",
)
@click.option(
    "--true-cfg",
    "true_cfg",
    default=None,
    type=FiniteFloat(0),
    help="FLUX.1: real classifier-free guidance with --negative-prompt (two transformer batches a step).",
)
@click.option(
    "--seed",
    default=None,
    type=int,
    help="Random seed (same image as diffusers with this seed); image k of --num-images gets seed + k.",
)
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
    help=f"Sampler: {', '.join(SAMPLER_NAMES)}; or k-diffusion's with A1111's rules (A1111's images): "
    f"{', '.join(K_SAMPLER_NAMES)}, also by A1111 label ('DPM++ 2M'); or ComfyUI's with its rules "
    "(ComfyUI's images): comfy_euler, ... or 'comfyui:euler' (--scheduler is its earlier name).",
)
@click.option(
    "--schedule",
    default=DEFAULT_SCHEDULE,
    show_default=True,
    type=click.Choice(tuple(dict.fromkeys((*SCHEDULE_NAMES, *K_SCHEDULE_NAMES, *COMFY_SCHEDULER_NAMES)))),
    help="Schedule type (A1111's): the noise levels' spacing, for the samplers that take it "
    "(the k-diffusion samplers take them all; ComfyUI's comfy_* samplers take ComfyUI's schedulers).",
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
@click.option(
    "--init-image",
    "--image",
    "init_image",
    default=None,
    help="Image-to-image: start from this image (FLUX.1 Kontext: the image to edit).",
)
@click.option(
    "--reference-image",
    "reference_images",
    multiple=True,
    help="FLUX.2 [klein]: an image to edit from (repeat for several, up to 4).",
)
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
@sd3_options
@zimage_options
@kontext_options
@prompt_options
@embedding_options
@lora_options
@controlnet_options
@a1111_options
@sampler_settings_options
@from_png_options
def generate(
    prompt,
    model_dir,
    negative_prompt,
    steps,
    guidance,
    true_cfg,
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
    if prompt is None:
        raise click.UsageError("give a PROMPT, or --from-png / --parameters")
    from sdrt.runtime.imaging.png_info import format_parameters, save_png
    from sdrt.runtime.pipeline import Pipeline
    from sdrt.runtime.request import MAX_SEED, GenerationRequest
    from sdrt.runtime.request_checks import check_counts

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
    step_cache = sdxl.pop("step_cache")
    prompt, negative_prompt = styled(prompt, negative_prompt, sdxl)
    if masking is not None and mask_image is None:
        raise click.UsageError(
            "--mask-blur, --invert-mask, --inpaint-area, --mask-padding, --mask-fill and --paste-back need --mask"
        )
    if seed is None:  # drawn here, so that the output names are known (and checked) first
        seed = random.SystemRandom().randint(0, MAX_SEED)
    check_counts(steps, num_images)  # before the names of num_images outputs are made and checked
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

    sampler = resolve_sampler_name(sampler)
    seeds, a1111_noise = a1111_noise_settings(sdxl, sampler, seed, num_images)
    if guidance is None:  # the export's own default (FLUX.1's 3.5, Fill's 30), else the request's
        guidance = pipeline.manifest.model_family.guidance_default(pipeline.manifest) or DEFAULT_GUIDANCE
    request = GenerationRequest(
        prompt,
        negative_prompt=negative_prompt,
        steps=steps,
        guidance_scale=guidance,
        true_cfg_scale=true_cfg,
        **zimage_settings(sdxl),
        **kontext_settings(sdxl),
        skip_layer_guidance=skip_layer_guidance(sdxl),
        t5=sdxl.pop("t5"),
        max_sequence_length=sdxl.pop("max_sequence_length"),
        seeds=seeds,  # image k: seed + k, each reproducible alone (A1111)
        height=height,
        width=width,
        num_images=num_images,
        sampler=sampler,
        schedule=schedule,
        init_image=init_image,
        reference_images=list(sdxl.pop("reference_images")) or None,
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
        cache=step_cache,
        eta=eta,
        img2img_fix_steps=sdxl.pop("img2img_fix_steps"),
        discard_penultimate_sigma=sdxl.pop("discard_penultimate_sigma"),
        sampler_settings=sampler_settings(sdxl),
        a1111_noise=a1111_noise,
    )
    previews = None
    if preview is not None:
        from sdrt.runtime.features.preview import Preview

        def write_preview(step: int, total: int, images) -> None:
            path = paths[0].with_name(f"{paths[0].stem}-step-{step}.png")
            check_output(path)  # never into a folder, a FIFO or a device of that name
            images[0].save(path)

        previews = Preview(preview, write_preview)
    with stop_on_signals() as stop:
        result = pipeline.run(request, progress=progress, preview=previews, cancel=stop)
    if not quiet:
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
        for branch, steps in (result.full_steps or {}).items():
            click.echo(f"cache: {branch} ran in full at steps {' '.join(map(str, steps)) or 'none'}", err=True)
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
                    **({} if result.full_steps is None else {"full_steps": result.full_steps}),
                }
            )
        )
    elif not quiet:
        for path in paths:
            click.echo(str(path))
