"""What a generation made, as PNG parameters (sdrt.runtime.imaging.png_info) and API responses report it."""

from __future__ import annotations

from pathlib import Path

from sdrt.runtime.request_resolve import ResolvedRequest
from sdrt.runtime.schedulers import discard_option_applies
from sdrt.runtime.text.prompts.emphasis import DEFAULT_EMPHASIS


def generation_parameters(
    resolved: ResolvedRequest, model: str, embeddings: dict[str, str], refiner: str | None, loras: list | None = None
) -> dict:
    """`embeddings`: the textual-inversion embeddings the prompts used, name -> short hash;
    `refiner`: the refiner's name when one took over; `loras`: the LoRAs merged
    (sdrt.runtime.features.lora.adapters.UsedLora)."""
    request = resolved.request
    prompts = resolved.prompts
    parameters = {
        "prompt": prompts if len(prompts) > 1 else prompts[0],
        "negative_prompt": request.negative_prompt,
        "steps": int(request.steps),
        "guidance_scale": float(request.guidance_scale),
        "seed": resolved.seeds if resolved.per_prompt_seeds else resolved.seeds[0],
        "height": resolved.height,
        "width": resolved.width,
        "num_images": int(request.num_images),
        "sampler": request.sampler,
        "schedule": request.schedule,
        "model": model,
    }
    if resolved.per_image_seeds:  # each image's own seed (image k alone with seeds[k] is image k)
        parameters["seeds"] = list(resolved.seeds)
    if resolved.from_image:
        parameters["strength"] = resolved.strength
    if request.a1111_noise is not None:  # A1111's noise settings (sdrt.runtime.a1111_noise)
        from sdrt.runtime.a1111_noise import noise_parameters

        parameters["a1111_noise"] = noise_parameters(request.a1111_noise)
    if request.discard_penultimate_sigma and discard_option_applies(request.sampler):  # A1111 records it only then
        parameters["discard_penultimate_sigma"] = True
    if request.eta is not None:  # the samplers that take one (DDIM's variance, TCD's gamma)
        parameters["eta"] = float(request.eta)
    if request.true_cfg_scale is not None:  # FLUX.1's real CFG (guidance_scale is then the distilled guidance)
        parameters["true_cfg_scale"] = float(request.true_cfg_scale)
    for name in ("cfg_truncation", "cfg_normalization"):  # Z-Image's CFG options
        if getattr(request, name) is not None:
            parameters[name] = float(getattr(request, name))
    if request.skip_layer_guidance is not None:  # SD3 (sdrt.runtime.features.skip_layers)
        skip = request.skip_layer_guidance
        parameters["skip_layer_guidance"] = {
            "layers": list(skip.layers),
            "scale": skip.scale,
            "start": skip.start,
            "stop": skip.stop,
        }
    if request.reference_images is not None:  # FLUX.2's editing: how many images it read
        parameters["reference_images"] = len(request.reference_images)
    if request.t5 is False:  # SD3 run without T5
        parameters["t5"] = False
    if request.max_sequence_length is not None:  # SD3's T5 length
        parameters["max_sequence_length"] = int(request.max_sequence_length)
    options = resolved.text_options
    if options.clip_skip > 1:  # A1111 records these only when they change something
        parameters["clip_skip"] = options.clip_skip
    if options.emphasis.name != DEFAULT_EMPHASIS and any("(" in t or "[" in t for t in prompts + resolved.negatives):
        parameters["emphasis"] = options.emphasis.name
    if embeddings:
        parameters["ti_hashes"] = dict(embeddings)
    if loras:
        parameters["loras"] = {lora.name: {"text": lora.weights.text, "unet": lora.weights.unet} for lora in loras}
        parameters["lora_hashes"] = {lora.name: lora.short_hash for lora in loras}
    if request.deepcache is not None:
        parameters["deepcache"] = f"{request.deepcache.interval}:{request.deepcache.branch}"
    if request.cache is not None:
        parameters["cache"] = request.cache.text
    if request.vae != "full":
        parameters["vae"] = request.vae
    if resolved.controls:
        from sdrt.runtime.features.controlnet.units import CONTROL_MODES

        parameters["controlnets"] = [
            {
                "model": Path(str(unit.model)).name,
                "scale": float(unit.scale),
                "start": float(unit.start),
                "end": float(unit.end),
                "mode": CONTROL_MODES[unit.mode],
                "preprocessor": unit.preprocessor,
            }
            for unit, _ in resolved.controls
        ]
    if refiner is not None:
        parameters.update(refiner=refiner, refiner_switch=float(request.refiner_switch))
    return parameters
