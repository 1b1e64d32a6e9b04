"""A1111's options (`GET/POST /sdapi/v1/options`, a request's `override_settings`): the ones sdrt
honours, the ones it reports as fixed, and the check that refuses any change it cannot make (a
4xx naming the option), so no option a client sets is silently ignored."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sdrt.runtime.a1111_noise import A1111_RANDN_SOURCE, RANDN_SOURCES
from sdrt.runtime.request import MAX_CLIP_SKIP, MAX_SEED
from sdrt.runtime.sampler_settings import SETTING_NAMES, SamplerSettings
from sdrt.runtime.schedulers import a1111_unipc as unipc
from sdrt.runtime.text.prompts.emphasis import DEFAULT_EMPHASIS, EMPHASIS_MODES
from sdrt.serve.schemas import RequestError

MODEL_OPTION = "sd_model_checkpoint"
#: sdrt's A1111 server starts on A1111's default noise, GPU (torch's CUDA Philox, emulated).
DEFAULT_RANDN_SOURCE = A1111_RANDN_SOURCE
#: Options sdrt cannot change, with the value it works with (a client may set them to that value).
FIXED_OPTIONS = {
    "samples_format": "png",
    "grid_format": "png",
    "enable_pnginfo": True,
    "eta_ddim": 0.0,
    "sd_vae_overrides_per_model_preferences": True,
    "samples_save": False,
    "grid_save": False,
    "save_images_add_number": False,
    "CLIP_stop_at_last_layers_sdxl": None,
    "sdxl_crop_top": 0,
    "sdxl_crop_left": 0,
    "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0,
    "upcast_attn": False,
    "token_merging_ratio": 0.0,
    # A1111's UniPC options (sdrt.runtime.schedulers.a1111_unipc), at A1111's defaults.
    "uni_pc_variant": unipc.DEFAULT_VARIANT,
    "uni_pc_skip_type": unipc.DEFAULT_SKIP_TYPE,
    "uni_pc_order": unipc.DEFAULT_ORDER,
    "uni_pc_lower_order_final": unipc.DEFAULT_LOWER_ORDER_FINAL,
}
#: What A1111 calls the model's own VAE; "TAESD" (or "tiny") picks the tiny VAE (sdrt.serve.a1111).
VAE_CHOICES = ("Automatic", "None")


@dataclass(frozen=True)
class A1111Options:
    """The server-wide options requests use unless their override_settings say otherwise."""

    clip_skip: int = 1
    emphasis: str = DEFAULT_EMPHASIS
    sd_vae: str = "Automatic"
    #: From an image with a k-diffusion sampler, all steps run (of a schedule of steps / strength).
    img2img_fix_steps: bool = False
    #: A1111's samplers lay out one step more and drop the next-to-last level (GenerationRequest's
    #: discard_penultimate_sigma).
    always_discard_next_to_last_sigma: bool = False
    #: ENSD: the sampler's fresh noise from generators of seed + this (sdrt.runtime.a1111_noise).
    eta_noise_seed_delta: int = 0
    #: The noise's generator (CPU, GPU, NV); A1111's default GPU unless the server starts with another.
    randn_source: str = DEFAULT_RANDN_SOURCE
    #: A1111's sampler settings (sgm_noise_multiplier, ...: GenerationRequest's sampler_settings).
    sampler: SamplerSettings = SamplerSettings()

    def report(self, model_title: str, model_hash: str | None, preview_every: int) -> dict:
        return {
            **FIXED_OPTIONS,
            MODEL_OPTION: model_title,
            "sd_checkpoint_hash": model_hash,
            "CLIP_stop_at_last_layers": self.clip_skip,
            "emphasis": self.emphasis,
            "sd_vae": self.sd_vae,
            "img2img_fix_steps": self.img2img_fix_steps,
            "always_discard_next_to_last_sigma": self.always_discard_next_to_last_sigma,
            "eta_noise_seed_delta": self.eta_noise_seed_delta,
            "randn_source": self.randn_source,
            **self.sampler.options(),
            "live_previews_enable": preview_every > 0,
            "show_progress_every_n_steps": preview_every or -1,
            "live_preview_content": "Combined",
            "show_progress_type": "Approx cheap" if preview_every else "None",
        }

    def changed(self, changes: dict, field: str) -> A1111Options:
        """These options with `changes` applied (model switches aside: see MODEL_OPTION); a
        change sdrt cannot make is a 400 naming `field`.KEY."""
        updates: dict = {}
        settings: dict = {}
        for key, value in changes.items():
            where = f"{field}.{key}"
            if key == MODEL_OPTION:
                continue
            if key == "CLIP_stop_at_last_layers":
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLIP_SKIP:
                    raise RequestError(400, f"{where} must be an integer from 1 to {MAX_CLIP_SKIP}", where)
                updates["clip_skip"] = value
            elif key == "emphasis":
                if value not in EMPHASIS_MODES:
                    raise RequestError(400, f"{where} must be one of {', '.join(EMPHASIS_MODES)}", where)
                updates["emphasis"] = value
            elif key == "sd_vae":
                if not isinstance(value, str):
                    raise RequestError(400, f"{where} must be a VAE name (GET /sdapi/v1/sd-vae)", where)
                updates["sd_vae"] = value
            elif key == "randn_source":
                if value not in RANDN_SOURCES:
                    raise RequestError(400, f"{where} must be one of {', '.join(RANDN_SOURCES)}", where)
                updates["randn_source"] = value
            elif key == "eta_noise_seed_delta":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
                    raise RequestError(400, f"{where} must be an integer from 0 to {MAX_SEED}", where)
                updates["eta_noise_seed_delta"] = value
            elif key in ("img2img_fix_steps", "always_discard_next_to_last_sigma"):
                if not isinstance(value, bool):
                    raise RequestError(400, f"{where} must be true or false", where)
                updates[key] = value
            elif key in SETTING_NAMES:
                settings[key] = value
            elif key in FIXED_OPTIONS:
                if value != FIXED_OPTIONS[key]:
                    raise RequestError(
                        400, f"{where}: sdrt cannot change this option (it is {FIXED_OPTIONS[key]!r})", where
                    )
            else:
                raise RequestError(
                    400,
                    f"{where}: sdrt does not support this option (GET /sdapi/v1/options lists those it reports)",
                    where,
                )
        if settings:
            sampler = replace(self.sampler, **settings)
            problem = sampler.problem()
            if problem is not None:
                name, why = problem
                raise RequestError(400, f"{field}.{name} {why}, got {settings[name]!r}", f"{field}.{name}")
            updates["sampler"] = sampler
        return replace(self, **updates)
