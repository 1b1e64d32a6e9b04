"""Checks of a GenerationRequest's optional features against the model (the family's own
settings are its family's: sdrt.runtime.families; what combines with what:
sdrt.runtime.features.combinations): the sampler with its schedule type and eta, latents as the
start, the VAE, and DeepCache; the step and image counts. Each failure is a GenerationError naming the request field."""

from __future__ import annotations

import numpy as np

from sdrt.errors import ConfigError, GenerationError
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.sampler_settings import SamplerSettings
from sdrt.runtime.schedulers import SAMPLER_NAMES, SAMPLERS, check_sampler_space

#: More steps than any sampler schedule needs; bounds a request's tables and time.
MAX_STEPS = 10_000
#: More images than one request may ask for (an export's batch limit is lower still); bounds the
#: work a caller does (output names, seeds) before the model's own limit is known.
MAX_NUM_IMAGES = 1024


def check_counts(steps, num_images) -> None:
    """The step and image counts, which size everything after them: checked before any work
    (the CLI calls this before loading the model; resolve() again)."""
    if not _is_count(steps) or not 1 <= steps <= MAX_STEPS:
        raise GenerationError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}", "steps")
    if not _is_count(num_images) or num_images < 1:
        raise GenerationError(f"num_images must be a positive integer, got {num_images!r}", "num_images")
    if num_images > MAX_NUM_IMAGES:
        raise GenerationError(f"num_images must be at most {MAX_NUM_IMAGES}, got {num_images}", "num_images")


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_sampling(request, manifest: Manifest) -> None:
    if request.sampler not in SAMPLERS:
        raise GenerationError(
            f"unknown sampler {request.sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}", "sampler"
        )
    try:
        check_sampler_space(request.sampler, manifest.sampler_space)
    except ConfigError as error:
        raise GenerationError(str(error), "sampler") from None
    try:
        SAMPLERS[request.sampler].schedule_overrides(request.schedule)
    except ConfigError as error:
        raise GenerationError(str(error), "schedule") from None
    if not isinstance(request.discard_penultimate_sigma, bool):
        raise GenerationError("discard_penultimate_sigma must be true or false", "discard_penultimate_sigma")
    if not isinstance(request.sampler_settings, SamplerSettings):
        raise GenerationError("sampler_settings must be a SamplerSettings", "sampler_settings")
    request.sampler_settings.check()
    if request.eta is not None and (
        not getattr(SAMPLERS[request.sampler].cls, "takes_eta", False)
        or not isinstance(request.eta, (int, float))
        or not 0 <= request.eta <= 1
    ):
        raise GenerationError(
            f"eta must be in [0, 1] and is for samplers that take one "
            f"({', '.join(name for name, entry in SAMPLERS.items() if getattr(entry.cls, 'takes_eta', False))}), not "
            f"{request.sampler} with eta {request.eta!r}",
            "eta",
        )


def check_deepcache(request, manifest: Manifest) -> None:
    """DeepCache's settings and the export's graphs (what it runs with: sdrt.runtime.features.combinations)."""
    problem = None if request.deepcache is None else request.deepcache.problem(manifest)
    if problem is not None:
        raise GenerationError(problem, "deepcache")


def check_cache(request, manifest: Manifest) -> None:
    """The step cache's settings and the export's graphs, where the family takes that cache (a
    family that does not is refused by name: sdrt.runtime.features.combinations)."""
    cache = request.cache
    if cache is not None and getattr(cache, "feature", None) in manifest.model_family.features:
        from sdrt.runtime.features.step_caches import cache_problem

        problem = cache_problem(cache, manifest)
        if problem is not None:
            raise GenerationError(problem, "cache")
    elif cache is not None:
        from sdrt.runtime.features.step_caches import CACHES

        if not isinstance(cache, tuple(CACHES.values())):
            raise GenerationError(f"cache must be one of {', '.join(CACHES)} (NAME[:SETTINGS]), got {cache!r}", "cache")


def latent_size(request, manifest: Manifest, strength) -> tuple[int, int, float]:
    latents = request.init_latents
    if not isinstance(latents, np.ndarray) or latents.ndim != 4 or latents.shape[1] != manifest.latent_channels:
        raise GenerationError(
            f"init latents must be one array [batch, {manifest.latent_channels}, h, w]", "init_latents"
        )
    if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise GenerationError(f"strength must be in (0, 1], got {strength}", "strength")
    return latents.shape[2] * manifest.vae_scale_factor, latents.shape[3] * manifest.vae_scale_factor, strength


def check_vae(request, manifest: Manifest) -> None:
    from sdrt.runtime.vae import DECODERS

    if not isinstance(request.vae, str) or request.vae not in DECODERS:
        raise GenerationError(f"unknown VAE {request.vae!r}; choose one of {', '.join(DECODERS)}", "vae")
    if request.vae == "tiny" and manifest.tiny_vae is None:
        raise GenerationError(
            "this export has no tiny VAE: re-export the model with --tiny-vae SOURCE (TAESD for "
            "SD 1.x/2.x, TAESDXL for SDXL)",
            "vae",
        )
