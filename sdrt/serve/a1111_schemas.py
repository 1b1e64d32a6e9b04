"""The A1111 request bodies (txt2img, img2img), field by field as A1111 defines them, and the
policy that keeps any of them from being silently ignored: a field sdrt honours is used; a field
it cannot honour is refused with a 400 naming it unless it has its neutral value; a purely
cosmetic one (where A1111 would save files, say) is accepted with a warning in `info`; a field
A1111 does not define is refused."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, StrictStr, field_validator

from sdrt.runtime.features.controlnet.units import MAX_SCALE as MAX_CONTROL_SCALE
from sdrt.runtime.features.hires import MAX_SCALE as MAX_HIRES_SCALE
from sdrt.runtime.request import MAX_SEED
from sdrt.runtime.request_checks import MAX_STEPS
from sdrt.runtime.text.checks import MAX_PROMPT_CHARS
from sdrt.serve.kontext_fields import KontextFields
from sdrt.serve.schemas import MAX_SIDE, Body, RequestError
from sdrt.serve.sd3_fields import Sd3Fields

MAX_MASK_BLUR = 64  # A1111's slider limit
#: The most styles one request may name (each is applied in turn to the prompt).
MAX_REQUEST_STYLES = 64

#: Fields sdrt cannot honour: the values that leave them without effect, and why others are refused.
NEUTRAL_ONLY: dict[str, tuple[tuple, str]] = {
    "restore_faces": ((False, None), "face restoration is not supported"),
    "tiling": ((False, None), "seamless tiling is not supported"),
    "s_churn": ((0, None), "sampler churn is not supported"),
    "s_tmin": ((0, None), "sampler churn is not supported"),
    "s_tmax": ((0, None), "sampler churn is not supported"),
    "s_noise": ((1, None), "sampler noise scaling is not supported"),
    "initial_noise_multiplier": ((1, None), "an initial noise multiplier is not supported"),
    "script_name": ((None, "", "None"), "scripts are not supported (GET /sdapi/v1/scripts)"),
    "script_args": (([], None), "scripts are not supported (GET /sdapi/v1/scripts)"),
    "firstphase_width": ((0, None), "the hires fix's first-pass size is not supported"),
    "firstphase_height": ((0, None), "the hires fix's first-pass size is not supported"),
    "resize_mode": ((0, None), "only resize mode 0 (just resize) is supported"),
    "disable_extra_networks": ((False, None), "disabling <lora:...> tags is not supported"),
    "latent_mask": ((None, ""), "a separate latent mask is not supported"),
    "override_settings_restore_afterwards": (
        (True, None),
        "a request's override_settings apply to it alone; change the server's defaults "
        "(sd_model_checkpoint included) with POST /sdapi/v1/options",
    ),
}
#: Fields with no effect on the images sdrt returns: a warning when set.
COSMETIC: dict[str, tuple[tuple, str]] = {
    "save_images": ((False, None), "sdrt does not save images on the server; they are in the response"),
    "do_not_save_samples": ((False, True, None), ""),
    "do_not_save_grid": ((False, True, None), ""),
    "include_init_images": ((False, None), "init images are not sent back"),
    "comments": (({}, None), "comments are not written to the images"),
    "force_task_id": ((None, ""), "progress is reported for the running job only"),
    "infotext": ((None, ""), "the infotext is not read; send the fields"),
}


class A1111ControlNetUnit(Body):
    """One unit of the A1111 ControlNet extension's `alwayson_scripts.controlnet.args`."""

    enabled: bool = True
    image: StrictStr | dict | None = None  # base64; or {"image": ..., "mask": ...}
    input_image: StrictStr | None = None  # the extension's older name of `image`
    module: StrictStr = "none"
    model: StrictStr = "None"
    weight: float = Field(1.0, ge=0, le=MAX_CONTROL_SCALE)
    guidance_start: float = Field(0.0, ge=0, le=1)
    guidance_end: float = Field(1.0, ge=0, le=1)
    control_mode: StrictStr | int = "Balanced"
    threshold_a: float = 100.0  # canny's low threshold
    threshold_b: float = 200.0  # canny's high threshold


class A1111ControlNetArgs(Body):
    args: list[A1111ControlNetUnit] = Field(default_factory=list)


def _script_is_off(args: Any) -> bool:
    """What clients send for an always-on script they do not use: no args, or [False]/{"args": [False]}."""
    if isinstance(args, dict):
        args = args.get("args", [])
    return args in ([], None) or (isinstance(args, list) and len(args) >= 1 and args[0] is False)


class A1111Request(Body, Sd3Fields, KontextFields):
    """The fields both A1111 routes take (A1111's StableDiffusionProcessing API models), and
    sdrt's SD3 fields (sdrt.serve.sd3_fields)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: StrictStr = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: StrictStr = Field("", max_length=MAX_PROMPT_CHARS)
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0)
    distilled_cfg_scale: float | None = Field(None, ge=0)  # Forge's: FLUX.1's distilled guidance
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed: int = -1
    width: int | None = Field(None, ge=1, le=MAX_SIDE)
    height: int | None = Field(None, ge=1, le=MAX_SIDE)
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    sampler_name: StrictStr | None = None
    sampler_index: StrictStr | None = None
    scheduler: StrictStr | None = None
    eta: float | None = Field(None, ge=0, le=1)
    refiner_checkpoint: StrictStr | None = None  # the served refiner's name; None, "" or "None": no refiner
    refiner_switch_at: float = Field(0.8, gt=0, le=1)  # 1: the refiner never takes over
    override_settings: dict[str, Any] = Field(default_factory=dict)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    deepcache: StrictStr | int | None = None  # sdrt's extension: DeepCache "INTERVAL[:BRANCH]"
    cache: StrictStr | None = None  # sdrt's extension: a transformer step cache "NAME[:SETTINGS]"
    # Fields checked against NEUTRAL_ONLY and COSMETIC (declared so that their types are A1111's).
    restore_faces: bool | None = None
    tiling: bool | None = None
    styles: list[StrictStr] | None = Field(None, max_length=MAX_REQUEST_STYLES)
    subseed_strength: float | None = None
    seed_resize_from_h: int | None = None
    seed_resize_from_w: int | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    initial_noise_multiplier: float | None = None
    script_name: StrictStr | None = None
    script_args: list | None = None
    disable_extra_networks: bool | None = None
    save_images: bool | None = None
    do_not_save_samples: bool | None = None
    do_not_save_grid: bool | None = None
    override_settings_restore_afterwards: bool | None = None
    comments: dict | None = None
    force_task_id: StrictStr | None = None
    infotext: StrictStr | None = None
    # The hires fix's fields; they matter only with enable_hr.
    enable_hr: bool | None = None
    denoising_strength: float | None = Field(None, gt=0, le=1)
    firstphase_width: int | None = None
    firstphase_height: int | None = None
    hr_scale: float | None = Field(None, ge=1, le=MAX_HIRES_SCALE)
    hr_upscaler: StrictStr | None = None
    hr_second_pass_steps: int | None = Field(None, ge=0, le=MAX_STEPS)
    hr_resize_x: int | None = Field(None, ge=0, le=MAX_SIDE)
    hr_resize_y: int | None = Field(None, ge=0, le=MAX_SIDE)
    hr_checkpoint_name: StrictStr | None = None
    hr_sampler_name: StrictStr | None = None
    hr_scheduler: StrictStr | None = None
    hr_prompt: StrictStr | None = Field(None, max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: StrictStr | None = Field(None, max_length=MAX_PROMPT_CHARS)
    hr_additional_modules: list | None = None

    @field_validator("alwayson_scripts")
    @classmethod
    def _known_scripts(cls, scripts: dict) -> dict:
        for name, args in scripts.items():
            if name.lower() != "controlnet" and not _script_is_off(args):
                raise ValueError(f"sdrt has no script {name!r} (GET /sdapi/v1/scripts)")
        return scripts

    def controlnet_units(self) -> list[A1111ControlNetUnit]:
        """The ControlNet extension's units (its script name in any case, as A1111 matches it)."""
        for name, args in self.alwayson_scripts.items():
            if name.lower() == "controlnet":
                try:
                    return A1111ControlNetArgs.model_validate(args).args
                except ValueError as error:
                    raise RequestError(
                        400, f"alwayson_scripts.{name}: {str(error).splitlines()[0]}", f"alwayson_scripts.{name}"
                    ) from None
        return []

    def checked(self) -> list[str]:
        """Refuses the fields sdrt cannot honour; returns warnings for the cosmetic ones set."""
        warnings = []
        for field, (neutral, why) in NEUTRAL_ONLY.items():
            if field in self.model_fields_set and getattr(self, field, None) not in neutral:
                raise RequestError(400, f"{field}: {why}", field)
        for field, (neutral, why) in COSMETIC.items():
            if field in self.model_fields_set and getattr(self, field, None) not in neutral and why:
                warnings.append(f"{field}: {why}")
        return warnings


class A1111Txt2ImgRequest(A1111Request):
    pass


class A1111Img2ImgRequest(A1111Request):
    init_images: list[StrictStr] = Field(min_length=1)
    denoising_strength: float = Field(0.75, gt=0, le=1)
    mask: StrictStr | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None  # instruct-pix2pix only: no effect on these models (nor in A1111)
    mask_blur: int | None = Field(None, ge=0, le=MAX_MASK_BLUR)  # when given, both of:
    mask_blur_x: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    mask_blur_y: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool | int = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    latent_mask: StrictStr | None = None
    include_init_images: bool | None = None
