"""ComfyUI's conditioning lists in the loop (sdrt.runtime.regions): a model call for each entry
on its window of the latents, the predictions weighed and summed per side as ComfyUI's
calc_cond_batch sums them, then classifier-free guidance.

`RegionalGuidance` is the stage's guider and its conditioning at once. Its batch holds the
latents once per entry (negative entries first); each step its calls cover the entries whose
noise-level window holds the call's sigma, one call per window size and text length (split
to the denoiser's largest batch), each row
with its window (sdrt.runtime.loop.denoiser crops the rows and pastes the outputs back, zeros
elsewhere). `combine` then gives, per side,

    out = sum_k(w_k * p_k) / (sum_k w_k + 1e-37)

with w_k the entry's weights on its window (sdrt.runtime.regions.weights), zeros outside it.
ComfyUI sums denoised predictions; its sum equals this one in the model's own prediction
(epsilon or v: the denoised sample is affine in it, with the same input), except where no
entry weighs: there ComfyUI's denoised sample is 0, and the prediction is the one whose
denoised sample is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.guiders import ClassifierFreeGuidance, NoGuidance
from sdrt.runtime.loop.timings import Timings
from sdrt.runtime.regions import PARAM, Placed, place, weights, window
from sdrt.runtime.request_resolve import ResolvedRequest
from sdrt.runtime.schedulers import COMFYUI, SAMPLERS
from sdrt.runtime.schedulers.base import predict_x0
from sdrt.runtime.text.encoders import TextEncoders

#: calc_cond_batch's starting weight sum (out_counts = ones * 1e-37), float32 as its tensors.
EMPTY_WEIGHT = np.float32(1e-37)


@dataclass(frozen=True)
class Slot:
    """One entry's rows of the batch: its side (0 negative, 1 positive), text, window, weights
    over the whole latents [images or 1, 1, H, W] (zeros outside the window) and noise-level window."""

    side: int
    text: str
    window: tuple[int, int, int, int]
    weights: np.ndarray
    levels: tuple[float, float] | None

    def active(self, sigma: np.float32) -> bool:
        """get_area_and_mult's window: skipped when sigma > timestep_start or < timestep_end (float32)."""
        if self.levels is None:
            return True
        highest, lowest = np.float32(self.levels[0]), np.float32(self.levels[1])
        return bool(lowest <= sigma <= highest)


class RegionalGuidance(ClassifierFreeGuidance):
    def __init__(
        self,
        slots: list[Slot],
        images: int,
        scale: float | None,
        *,
        encodings,
        extras,
        sequence_feed: str,
        embeddings,
        max_rows: int | None = None,
    ):
        super().__init__(1.0 if scale is None else scale)
        self.max_rows = max_rows  # the denoiser's largest batch (an engine's profile), None: any
        self.sequence_feed = sequence_feed  # rows of one call share its length
        self.unconditional = scale is not None
        self.slots = slots
        self.images = images
        self.encodings = encodings  # text -> the family's feeds of its encoding
        self.extras = extras  # side -> per-row feeds (SDXL's time_ids)
        self.embeddings = embeddings
        self._calls: dict[tuple[bool, ...], list] = {}
        self._active: tuple[bool, ...] = (True,) * len(slots)
        self._sigma = np.float32(0)
        self._latents: np.ndarray | None = None
        self.sampler = None
        self.counted_from = 0

    def follow(self, sampler, counted_from: int) -> None:
        """The stage's sampler, whose per-call sigmas (`sigmas`) decide the entries of a call."""
        self.sampler, self.counted_from = sampler, counted_from

    def model_latents(self, latents: np.ndarray) -> np.ndarray:
        self._latents = latents
        return np.concatenate([latents] * len(self.slots))

    def calls(self, step: int, dtypes: dict[str, np.dtype]) -> list:
        assert self.sampler is not None
        self._sigma = np.float32(self.sampler.sigmas[step + self.counted_from])
        self._active = tuple(slot.active(self._sigma) for slot in self.slots)
        if self._active not in self._calls:
            self._calls[self._active] = self._build(self._active, dtypes)
        return self._calls[self._active]

    def _build(self, active: tuple[bool, ...], dtypes: dict[str, np.dtype]) -> list:
        groups: dict[tuple, list[int]] = {}
        for index, slot in enumerate(self.slots):
            if active[index]:
                length = self.encodings[slot.text][self.sequence_feed].shape[0]
                groups.setdefault((slot.window[2:], length), []).append(index)
        per_call = len(self.slots) if self.max_rows is None else max(1, self.max_rows // self.images)
        chunks = [group[i : i + per_call] for group in groups.values() for i in range(0, len(group), per_call)]
        calls = []
        for members in chunks:
            rows: list[int] = []
            windows: list[tuple[int, int, int, int]] = []
            feeds: list[dict[str, np.ndarray]] = []
            for index in members:
                slot = self.slots[index]
                rows += range(index * self.images, (index + 1) * self.images)
                windows += [slot.window] * self.images
                feeds += [{**self.encodings[slot.text], **self.extras[slot.side]}] * self.images
            stacked = {
                name: np.stack([f[name] for f in feeds]).astype(dtypes.get(name, np.float32)) for name in feeds[0]
            }
            for value in stacked.values():
                value.flags.writeable = False
            calls.append((np.array(rows), stacked, tuple(windows)))
        return calls

    def combine(self, prediction: np.ndarray) -> np.ndarray:
        sides = [self._side(prediction, side) for side in ((0, 1) if self.unconditional else (1,))]
        if not self.unconditional:
            return sides[0]
        return super().combine(np.concatenate(sides))

    def _side(self, prediction: np.ndarray, side: int) -> np.ndarray:
        batch = self.images
        total = np.zeros((batch, *prediction.shape[1:]), np.float32)
        count = np.full((batch, 1, *prediction.shape[2:]), EMPTY_WEIGHT, np.float32)
        for index, slot in enumerate(self.slots):
            if slot.side == side and self._active[index]:
                total += prediction[index * batch : (index + 1) * batch] * slot.weights
                count += slot.weights
        out = total / count
        if np.any(count <= EMPTY_WEIGHT):  # no entry weighs there: ComfyUI's denoised sample is 0
            out += self._zero_denoised() * (EMPTY_WEIGHT / count)
        return out

    def _zero_denoised(self) -> np.ndarray:
        """The prediction whose denoised sample is 0 (the denoised sample is affine in it)."""
        assert self._latents is not None and self.sampler is not None
        kind, x = self.sampler.config.prediction_type, self._latents
        offset = predict_x0(kind, np.zeros_like(x), x, self._sigma)
        slope = predict_x0(kind, np.ones_like(x), x, self._sigma) - offset
        return -offset / slope


def regional_guidance(
    encoders: TextEncoders,
    engines: dict[str, Engine],
    resolved: ResolvedRequest,
    guider: NoGuidance,
    warnings: list[str],
    timings: Timings,
) -> RegionalGuidance:
    """The request's conditioning lists on its latents, their texts encoded once each."""
    request = resolved.request
    entries = request.conditionings
    assert entries is not None
    if SAMPLERS[request.sampler].family != COMFYUI:  # their per-call sigmas decide the entries
        raise GenerationError("conditioning lists run with ComfyUI's samplers (comfy_*)", PARAM)
    if type(guider) not in (ClassifierFreeGuidance, NoGuidance):
        kind = type(guider).__name__
        raise GenerationError(f"conditioning lists do not run with this model's guidance ({kind})", PARAM)
    factor = encoders.manifest.vae_scale_factor
    rows, columns = resolved.height // factor, resolved.width // factor
    negative, positive = place(entries, rows, columns)
    sides: Sequence[list[Placed]] = (negative, positive) if guider.unconditional else ([], positive)
    slots = []
    for side, placed in enumerate(sides):
        for entry in placed:
            y, x, height, width = window(entry.area, rows, columns)
            mult = _per_image(weights(entry, rows, columns), request.num_images)
            full = np.zeros((len(mult), 1, rows, columns), np.float32)
            full[:, 0, y : y + height, x : x + width] = mult
            slots.append(Slot(side, entry.prompt, (y, x, height, width), full, entry.levels))
    denoiser = engines[encoders.family.denoiser.component]
    _check_windows(denoiser, encoders.family.denoiser.sample, slots)
    batch = denoiser.inputs[encoders.family.denoiser.sample].shape[0]
    batches = denoiser.dims.get(batch) if isinstance(batch, str) else None
    texts = list(dict.fromkeys(slot.text for slot in slots))
    negative_only = frozenset(t for t in texts if all(s.side == 0 for s in slots if s.text == t))
    used: dict[str, None] = {}
    encoded = encoders.encode(texts, engines, resolved.text_options, timings, used, negative_only, warnings)
    family = encoders.family
    encodings = {text: family.text_feeds(encoding) for text, encoding in zip(texts, encoded)}
    extras = family.row_feeds(encoders.manifest, resolved)
    scale = guider.scale if isinstance(guider, ClassifierFreeGuidance) else None
    side_extras = {0: dict(extras["negative"]), 1: dict(extras["positive"])}
    sequence = family.text_sequence_feed
    return RegionalGuidance(
        slots,
        request.num_images,
        scale,
        encodings=encodings,
        extras=side_extras,
        sequence_feed=sequence,
        embeddings=tuple(used),
        max_rows=None if batches is None else batches.max,
    )


def _check_windows(engine: Engine, sample: str, slots: list[Slot]) -> None:
    """Each window must be a size the exported denoiser takes (ComfyUI's UNet takes any size;
    an export's takes its latent sizes in steps of its downsampling)."""
    names = engine.inputs[sample].shape[2:]
    for slot in slots:
        for name, size in zip(names, slot.window[2:]):
            valid = engine.dims.get(name) if isinstance(name, str) else None
            if valid is not None and not valid.contains(size):
                y, x, height, width = slot.window
                raise GenerationError(
                    f"the area {width}x{height} at ({x}, {y}) (latent units) does not fit this export's denoiser: "
                    f"{name} takes {valid.min}..{valid.max} in steps of {valid.multiple}",
                    PARAM,
                )


def _per_image(mult: np.ndarray, images: int) -> np.ndarray:
    """get_area_and_mult's mask rows for the batch: the first `images`, repeated to the batch."""
    mult = mult[:images]
    if len(mult) == 1 or len(mult) == images:
        return mult
    if images % len(mult):
        raise GenerationError(f"a mask of {len(mult)} images does not divide a batch of {images}", PARAM)
    return np.concatenate([mult] * (images // len(mult)))
