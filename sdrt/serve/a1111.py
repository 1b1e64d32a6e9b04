"""Helpers of the HTTP APIs: images as base64 PNGs (A1111 sampler names: a1111_samplers), and the map from a
request field (GenerationError.param) to each API's own field name."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from sdrt.runtime.imaging.inputs import InputImageError, check_pixels
from sdrt.serve.a1111_samplers import (  # noqa: F401  (re-exported: the API helpers' one import)
    A1111_DEFAULT_SAMPLER,
    A1111_SAMPLERS,
    NO_REFINER,
    SAMPLER_ETA,
    a1111_sampler_settings,
    check_eta,
    k_family_applies,
    sdrt_sampler,
)
from sdrt.serve.schemas import RequestError

#: GenerationRequest fields -> the field of each API that carries them.
OPENAI_FIELDS = {
    "num_images": "n",
    "sampler": "sampler",
    "loras": "prompt",
    "controlnets": "controlnets",
    "vae": "vae",
    "schedule": "schedule",
    "init_image": "image",
    "mask_image": "mask",
}
#: A1111 `sd_vae` values that pick the tiny VAE (its live previews call TAESD so); any other
#: value ("Automatic", "None", a VAE file) decodes with the model's own VAE.
TINY_VAE_NAMES = ("tiny", "taesd", "taesdxl")
MODEL_VAE_NAMES = ("automatic", "none", "full", "")
A1111_FIELDS = {
    "num_images": "batch_size",
    "guidance_scale": "cfg_scale",
    "sampler": "sampler_name",
    "strength": "denoising_strength",
    "init_image": "init_images",
    "mask_image": "mask",
    "refiner_switch": "refiner_switch_at",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "emphasis": "override_settings.emphasis",
    "loras": "prompt",
    "controlnets": "alwayson_scripts.controlnet.args",
    "vae": "override_settings.sd_vae",
    "schedule": "scheduler",
    "mask_options": "mask",
    "hires": "enable_hr",
    "deepcache": "deepcache",
    "cache": "cache",
    "seed_resize_from": "seed_resize_from_w",
}
#: What A1111 clients send for "no refiner" and "no ControlNet model".
NO_MODEL = NO_REFINER


def png_base64(image: Image.Image, parameters_text: str | None = None) -> str:
    from PIL import PngImagePlugin

    buffer = io.BytesIO()
    info = None
    if parameters_text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters_text)
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: str, param: str) -> bytes:
    """The image file in a base64 field, checked from its header only (a known format, at most
    MAX_INPUT_PIXELS): cheap enough for the event loop. The pixels are decoded later, in the
    worker, once the request is admitted."""
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as image:  # parses the header, decodes nothing
            check_pixels(image.size, param)
    except InputImageError as error:
        raise RequestError(400, str(error), param) from None
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise RequestError(400, f"{param} is not a base64-encoded image", param) from None
    return raw


def open_base64_image(data, param: str) -> Image.Image:
    """The decoded image of a base64 field (checked as decode_image checks it)."""
    if not isinstance(data, str):
        raise RequestError(400, f"{param} must be a base64-encoded image", param)
    try:
        with Image.open(io.BytesIO(decode_image(data, param))) as image:
            image.load()
            return image
    except (ValueError, OSError, Image.DecompressionBombError):
        raise RequestError(400, f"{param} is not a base64-encoded image", param) from None


def refiner_switch(pipeline, checkpoint: str | None, switch_at: float) -> float | None:
    """The refiner switch for A1111's refiner fields: None without a refiner (or with
    refiner_switch_at 1, where A1111 never switches). The checkpoint must name the served
    refiner: its folder name, with or without a path or an extension."""
    if checkpoint is None or checkpoint.strip().lower() in NO_REFINER or switch_at >= 1:
        return None
    refiner = getattr(pipeline, "refiner", None)
    if refiner is None:
        raise RequestError(
            400,
            f"refiner_checkpoint {checkpoint!r}: this server has no refiner (start it with --refiner DIR)",
            "refiner_checkpoint",
        )
    stem = checkpoint.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].split(" [", 1)[0]
    if stem not in (refiner.folder.name, refiner.folder.stem) and stem.rsplit(".", 1)[0] != refiner.folder.name:
        raise RequestError(
            400,
            f"refiner_checkpoint {checkpoint!r} is not served; this server's refiner is {refiner.folder.name!r}",
            "refiner_checkpoint",
        )
    return switch_at


def control_units(body, init_image: bytes | None) -> list:
    """The enabled units of the A1111 ControlNet extension's request. A unit without an image
    takes the init image (image-to-image), as the extension does; model names may carry the
    extension's " [hash]" suffix."""
    from sdrt.runtime.features.controlnet.units import ControlUnit

    units = []
    for index, unit in enumerate(body.controlnet_units()):
        model = unit.model.split(" [", 1)[0].strip()
        if not unit.enabled or model.lower() in NO_MODEL:
            continue
        field = f"alwayson_scripts.controlnet.args[{index}].image"
        data = unit.image if unit.image is not None else unit.input_image
        if isinstance(data, dict):
            data = data.get("image")
        if data is not None and not isinstance(data, str):
            raise RequestError(400, f"{field} must be a base64-encoded image", field)
        image = decode_image(data, field) if data else init_image
        units.append(
            ControlUnit(
                served_name(model, f"alwayson_scripts.controlnet.args[{index}].model"),
                image,
                unit.weight,
                unit.guidance_start,
                unit.guidance_end,
                unit.control_mode,
                unit.module,
                unit.threshold_a,
                unit.threshold_b,
            )
        )
    return units


def a1111_vae(sd_vae: str, param: str) -> str:
    """The decoder for A1111's sd_vae: the model's own ("Automatic", "None") or the tiny VAE."""
    name = sd_vae.strip().lower()
    if name in TINY_VAE_NAMES:
        return "tiny"
    if name in MODEL_VAE_NAMES:
        return "full"
    raise RequestError(
        400,
        f"{param}: sdrt decodes with the model's own VAE (Automatic) or its tiny VAE (TAESD), "
        f"not {sd_vae[:100]!r} (GET /sdapi/v1/sd-vae)",
        param,
    )


def _is_path(name: str) -> bool:
    return not name or name in (".", "..") or "/" in name or "\\" in name


def served_name(model: str, param: str) -> str:
    """A ControlNet named by a client: a name in the server's --controlnet-dir, never a path on
    the server's disk."""
    if _is_path(model):
        raise RequestError(
            400,
            f"{param}: name a ControlNet of this server (GET /controlnet/model_list), not a path: {model[:100]!r}",
            param,
        )
    return model


def check_lora_tags(prompt: str, param: str) -> None:
    """A client's `<lora:NAME>` tags name LoRAs of the server's --lora-dir, never files on its disk
    (a malformed tag is left to the request's resolution, which says what is wrong)."""
    from sdrt.runtime.features.lora.tags import extract_tags
    from sdrt.runtime.features.lora.weights_map import LoraError

    try:
        _, refs = extract_tags(prompt)
    except LoraError:
        return
    for ref in refs:
        if _is_path(ref.source):
            raise RequestError(
                400,
                f"{param}: <lora:...> names a LoRA of this server (GET /sdapi/v1/loras), not a "
                f"path: {ref.source[:100]!r}",
                param,
            )


#: A1111's inpainting_fill values sdrt honours -> sdrt.runtime.features.inpaint_area fills.
INPAINTING_FILLS = {0: "fill", 1: "original"}


def a1111_mask_options(body):
    """A1111's mask fields as sdrt's MaskOptions (A1111 always pastes the original back)."""
    from sdrt.runtime.features.inpaint_area import MaskOptions

    if body.inpainting_fill not in INPAINTING_FILLS:
        raise RequestError(
            400,
            "inpainting_fill: 2 (latent noise) and 3 (latent nothing) are not supported; use 0 (fill) or 1 (original)",
            "inpainting_fill",
        )
    blur_x = body.mask_blur_x if body.mask_blur is None else body.mask_blur
    blur_y = body.mask_blur_y if body.mask_blur is None else body.mask_blur
    return MaskOptions(
        invert=bool(body.inpainting_mask_invert),
        blur_x=blur_x,
        blur_y=blur_y,
        fill=INPAINTING_FILLS[body.inpainting_fill],
        only_masked=bool(body.inpaint_full_res),
        padding=body.inpaint_full_res_padding,
        paste_back=True,
    )


def family_mask_options(family, options, warnings: list[str]):
    """A1111's mask handling where the served family has it (`masked_area`); elsewhere (FLUX.1 Fill
    and FLUX.1's inpainting, whose pipelines take the mask as it is) the mask is used as given, as
    Pipeline.generate with the image and the mask: the fields every A1111 client sends (blur,
    fill, masked area) are reported unused, an inverted mask is refused naming its field."""
    if options is None or "masked_area" in family.features:
        return options
    if options.invert:
        raise RequestError(
            400,
            f"inpainting_mask_invert: a {family.display_name} model takes its mask as given; invert the mask image",
            "inpainting_mask_invert",
        )
    warnings.append(
        f"mask_blur, inpainting_fill, inpaint_full_res: A1111's mask handling does not apply to "
        f"{family.display_name} models; the mask was used as given"
    )
    return None


#: What A1111 clients send for "the same as the first pass" in the hires fix's fields.
SAME_AS_FIRST_PASS = ("", "use same sampler", "use same scheduler", "use same checkpoint", "use same choices")


def _same(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in SAME_AS_FIRST_PASS)


def a1111_hires(body):
    """A1111's hires fix fields as a HiresFix (None without enable_hr)."""
    from sdrt.runtime.features.hires import DEFAULT_STRENGTH, DEFAULT_UPSCALER, HiresFix, upscaler_named

    if not body.enable_hr:
        return None
    if not _same(body.hr_checkpoint_name):
        raise RequestError(400, "hr_checkpoint_name: the second pass runs on the same model", "hr_checkpoint_name")
    if body.hr_additional_modules and not all(_same(item) for item in body.hr_additional_modules):
        raise RequestError(400, "hr_additional_modules are not supported", "hr_additional_modules")
    try:
        upscaler = upscaler_named(body.hr_upscaler or DEFAULT_UPSCALER)
    except ValueError as error:
        raise RequestError(400, f"hr_upscaler: {error}", "hr_upscaler") from None
    sampler = schedule = None
    if not _same(body.hr_sampler_name) or not _same(body.hr_scheduler):
        sampler, schedule = sdrt_sampler(
            None if _same(body.hr_sampler_name) else body.hr_sampler_name,
            None if _same(body.hr_scheduler) else body.hr_scheduler,
            k_family_applies(body, None),
        )
    return HiresFix(
        scale=body.hr_scale if body.hr_scale is not None else 2.0,
        width=body.hr_resize_x or None,
        height=body.hr_resize_y or None,
        upscaler=upscaler,
        steps=body.hr_second_pass_steps or 0,
        strength=body.denoising_strength or DEFAULT_STRENGTH,
        prompt=body.hr_prompt or None,
        negative_prompt=body.hr_negative_prompt or None,
        sampler=None if _same(body.hr_sampler_name) else sampler,
        schedule=None if _same(body.hr_scheduler) else schedule,
    )


def step_cache_field(value, param: str = "cache"):
    """sdrt's `cache` extension field ("first-block:THRESHOLD", "taylorseer:KEY=VALUE,...") as its step cache."""
    from sdrt.runtime.features.step_caches import parse_cache

    if value is None:
        return None
    try:
        return parse_cache(value)
    except ValueError as error:
        raise RequestError(400, f"{param}: {error}", param) from None


def deepcache_field(value, param: str = "deepcache"):
    """sdrt's `deepcache` extension field ("INTERVAL[:BRANCH]" or an interval) as DeepCache."""
    from sdrt.runtime.features.deepcache import DeepCache

    if value is None:
        return None
    try:
        return DeepCache.parse(str(value))
    except ValueError as error:
        raise RequestError(400, f"{param}: {error}", param) from None
