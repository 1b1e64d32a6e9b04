"""A1111's noise settings (modules/rng.py ImageRNG, processing.py): variation seeds (`subseeds`,
`subseed_strength`: the seed's noise slerped toward the variation seed's), `seed_resize_from`
(the noise of another size, pasted centred into this size's), `eta_noise_seed_delta` (ENSD:
after the initial noise, the sampler's fresh noise comes from generators seeded seed + ENSD)
and `randn_source` (CPU: torch's CPU generator, sdrt.runtime.rng; GPU and NV: torch's CUDA
Philox generator as A1111's NV source emulates it, sdrt.runtime.rng_philox).

Per image, as ImageRNG.first: with a variation strength, the variation noise is the first draw
of a fresh generator of its subseed, at the resize-from size; without a resize, the seed's noise
is the first draw of the image's generator, else a fresh generator's draw at the resize-from size
pasted into the image generator's first draw at the full size (centred: cropped where larger).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.rng_philox import PhiloxGenerator
from sdrt.runtime.seeds import MAX_SEED

CPU, GPU, NV = "CPU", "GPU", "NV"
RANDN_SOURCES = (CPU, GPU, NV)
#: A1111's option default (shared_options.py: randn_source "GPU").
A1111_RANDN_SOURCE = GPU
#: rng.slerp: above this mean cosine of the two noises, A1111 mixes them linearly instead.
SLERP_LINEAR_DOT = 0.9995
#: rng.slerp normalises along the noise's height axis (torch.norm(dim=1) of [channels, height, width]).
SLERP_AXIS = 1


def make_generator(source: str, seed: int):
    """A generator of `source` for `seed` (one per image in A1111: create_generator)."""
    return TorchGenerator(seed) if source == CPU else PhiloxGenerator(seed)


@dataclass(frozen=True)
class A1111Noise:
    """A1111's noise fields of one request; `subseeds` has one variation seed per image."""

    subseeds: tuple[int, ...] = ()
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None  # (width, height) in pixels; None: this size
    eta_noise_seed_delta: int = 0
    randn_source: str = CPU

    def check(self, images: int) -> None:
        """GenerationError naming the field at fault."""
        if self.randn_source not in RANDN_SOURCES:
            raise GenerationError(
                f"randn_source must be one of {', '.join(RANDN_SOURCES)}, got {self.randn_source!r}", "randn_source"
            )
        strength = self.subseed_strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise GenerationError(f"subseed_strength must be from 0 to 1, got {strength!r}", "subseed_strength")
        if not isinstance(self.subseeds, (tuple, list)):
            raise GenerationError(f"subseeds must be a list of seeds, got {self.subseeds!r}", "subseed")
        if strength and len(self.subseeds) != images:
            raise GenerationError(f"subseeds: {len(self.subseeds)} variation seeds for {images} images", "subseed")
        for value, param in (
            *((s, "subseed") for s in self.subseeds),
            (self.eta_noise_seed_delta, "eta_noise_seed_delta"),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_SEED:
                raise GenerationError(f"{param} must be an integer from 0 to {MAX_SEED}, got {value!r}", param)
        resize = self.seed_resize_from
        if resize is not None and not (
            isinstance(resize, (tuple, list))
            and len(resize) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in resize)
        ):
            raise GenerationError(
                f"seed_resize_from must be a width and a height, got {self.seed_resize_from!r}", "seed_resize_from"
            )

    def for_image(self, index: int) -> A1111Noise:
        """These settings for image `index` alone (its variation seed)."""
        return replace(self, subseeds=self.subseeds[index : index + 1])

    @property
    def changes_noise(self) -> bool:
        """Whether the initial noise differs from the seeds' first draws."""
        return bool(self.subseed_strength) or self.seed_resize_from is not None


def slerp(strength: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """rng.slerp of one image's noises [channels, height, width]: `strength` toward `high`;
    when nearly parallel, A1111's linear mix (which weighs `low` by the strength)."""
    low_norm = low / np.linalg.norm(low, axis=SLERP_AXIS, keepdims=True)
    high_norm = high / np.linalg.norm(high, axis=SLERP_AXIS, keepdims=True)
    dot = (low_norm * high_norm).sum(SLERP_AXIS)
    value = np.float32(strength)
    if dot.mean() > SLERP_LINEAR_DOT:
        return low * value + high * (np.float32(1) - value)
    omega = np.arccos(dot)
    sine = np.sin(omega)
    low_weight = np.expand_dims(np.sin((np.float32(1) - value) * omega) / sine, SLERP_AXIS)
    high_weight = np.expand_dims(np.sin(value * omega) / sine, SLERP_AXIS)
    return (low_weight * low + high_weight * high).astype(np.float32)


def _paste_centred(target: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """ImageRNG.first's paste of the resize-from noise into the full-size draw (both [c, h, w])."""
    dx, dy = (target.shape[2] - noise.shape[2]) // 2, (target.shape[1] - noise.shape[1]) // 2
    width = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    height = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    target[:, ty : ty + height, tx : tx + width] = noise[:, sy : sy + height, sx : sx + width]
    return target


def image_generators(generator) -> list:
    """The generator of each image (A1111's per-image generators), or a GenerationError."""
    if isinstance(generator, GeneratorGroup) and generator.rows_each == 1:
        return list(generator.generators)
    if isinstance(generator, (TorchGenerator, PhiloxGenerator)):
        return [generator]
    raise GenerationError("A1111's noise settings need one seed per image (seeds)", "seeds")


def a1111_initial_noise(settings: A1111Noise, generator, shape: tuple[int, ...], pixel_height: int) -> np.ndarray:
    """ImageRNG.first for a batch of `shape` [batch, c, h, w] drawn by `generator` (one per image)."""
    generators = image_generators(generator)
    if len(generators) != shape[0]:
        raise GenerationError(f"{len(generators)} image seeds for a batch of {shape[0]}", "seeds")
    image_shape = tuple(shape[1:])
    noise_shape = image_shape
    if settings.seed_resize_from is not None:
        factor = pixel_height // shape[2]  # the latents' downscale (A1111's // 8 for its models)
        width, height = settings.seed_resize_from
        noise_shape = (shape[1], height // factor, width // factor)
    images = []
    for index, image_generator in enumerate(generators):
        source = settings.randn_source
        if noise_shape != image_shape:
            noise = make_generator(source, image_generator.seed).randn(noise_shape)
        else:
            noise = image_generator.randn(image_shape)
        if settings.subseed_strength:
            variation = make_generator(source, settings.subseeds[index]).randn(noise_shape)
            noise = slerp(settings.subseed_strength, noise, variation)
        if noise_shape != image_shape:
            noise = _paste_centred(image_generator.randn(image_shape), noise)
        images.append(noise)
    return np.stack(images).astype(np.float32)


def ensd_generator(settings: A1111Noise, generator):
    """The generator of the sampler's fresh noise after the initial noise: with an ENSD, one per
    image seeded seed + ENSD (ImageRNG.first's last step), else None (the same generators)."""
    if not settings.eta_noise_seed_delta:
        return None
    # The sum as A1111 seeds it: torch's CPU generator keeps its low 32 bits, the Philox key all 64.
    made = [
        make_generator(settings.randn_source, g.seed + settings.eta_noise_seed_delta)
        for g in image_generators(generator)
    ]
    return made[0] if len(made) == 1 and not isinstance(generator, GeneratorGroup) else GeneratorGroup(made, 1)


def noise_parameters(settings: A1111Noise) -> dict:
    """The settings as a generation's parameters record them (sdrt.runtime.parameters)."""
    recorded: dict = {"randn_source": settings.randn_source}
    if settings.subseed_strength:
        recorded.update(subseeds=list(settings.subseeds), subseed_strength=float(settings.subseed_strength))
    if settings.seed_resize_from is not None:
        recorded["seed_resize_from"] = list(settings.seed_resize_from)
    if settings.eta_noise_seed_delta:
        recorded["eta_noise_seed_delta"] = int(settings.eta_noise_seed_delta)
    return recorded


def noise_fields(recorded: dict, position: int | None) -> list[tuple[str, object]]:
    """A1111's infotext fields of the noise (processing.create_infotext): the variation seed of
    image `position` (1-based; None: the first) and its strength, "Seed resize from" WxH, ENSD,
    and RNG where it is not A1111's default (GPU)."""
    fields: list[tuple[str, object]] = []
    if "subseeds" in recorded:
        subseeds = recorded["subseeds"]
        fields += [
            ("Variation seed", subseeds[(position or 1) - 1]),
            ("Variation seed strength", recorded["subseed_strength"]),
        ]
    if "seed_resize_from" in recorded:
        width, height = recorded["seed_resize_from"]
        fields.append(("Seed resize from", f"{width}x{height}"))
    if "eta_noise_seed_delta" in recorded:
        fields.append(("ENSD", recorded["eta_noise_seed_delta"]))
    if recorded.get("randn_source", A1111_RANDN_SOURCE) != A1111_RANDN_SOURCE:
        fields.append(("RNG", recorded["randn_source"]))
    return fields
