"""What the UNet gets besides the latents and the timestep, step by step.

Rows are stacked [unconditional; conditional] along the batch when guided (diffusers' order),
each prompt's rows repeated num_images times, consecutively. Per family:
- SD 1.x/2.x: the prompt's hidden states (`encoder_hidden_states`);
- SDXL (sdrt.runtime.families.sdxl): both encoders' hidden states, the pooled embedding (`text_embeds`)
  and the size (or aesthetic score) conditioning (`time_ids`).

Prompt editing and alternation (sdrt.runtime.text.prompts.schedule) make a row's text change during
denoising; each distinct text is encoded once. Rows whose texts have different chunk counts
cannot share a UNet call: they run in one call per length, which is what A1111 does by default
for a prompt and negative prompt of different lengths (its `pad_cond_uncond` is off), and keeps
a prompt's image independent of what it is batched with.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.guidance_embedding import guidance_embedding
from sdrt.runtime.manifest import TEXT_EMBEDS, TIMESTEP_COND, UNET_CONTEXT

#: Samplers for consistency-distilled models (LCM, TCD), and the guidance their LoRAs are made for.
CONSISTENCY_SAMPLERS = ("lcm", "tcd")
CONSISTENCY_GUIDANCE_MAX = 2.0
from sdrt.runtime.text.prompts.schedule import prompt_schedule
from sdrt.runtime.request import ResolvedRequest
from sdrt.runtime.text.encoders import TextEncoders

#: A row whose conditioning is zeros shaped like its partner's (SDXL's missing negative prompt).
ZEROS = object()
#: A1111's separator of composable-diffusion sub-prompts, which sdrt does not implement.
COMPOSABLE_AND = re.compile(r"\bAND\b")


@dataclass
class Row:
    ends: list[int]  # the last step of each schedule entry, ascending
    texts: list  # the text of each entry (or ZEROS)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-row feeds that do not change
    partner: int | None = None  # for ZEROS: the row whose shapes to copy

    def text_at(self, step: int):
        """The entry of UNet call `step` (counted from 0): the first whose last step is >= it."""
        return self.texts[min(bisect.bisect_left(self.ends, step), len(self.texts) - 1)]


class UnetConditioning:
    """The UNet's conditioning feeds at each step, as calls: (rows, feeds), `rows` the batch
    rows a call covers (None: all of them, in order)."""

    def __init__(self, rows: list[Row], encodings: dict[str, dict[str, np.ndarray]], guided: bool,
                 embeddings: tuple[str, ...] = ()):
        self.embeddings = embeddings  # the textual-inversion embeddings the texts use
        self.rows = rows
        self.encodings = encodings
        self.guided = guided
        self._calls: dict[tuple, list] = {}

    def calls(self, step: int, dtypes: dict[str, np.dtype]) -> list[tuple[np.ndarray | None, dict[str, np.ndarray]]]:
        state = tuple(row.text_at(step) for row in self.rows)
        if state not in self._calls:
            self._calls[state] = self._build(state, dtypes)
        return self._calls[state]

    def _build(self, state: tuple, dtypes: dict[str, np.dtype]) -> list:
        feeds = []
        for row, text in zip(self.rows, state):
            if text is ZEROS:
                partner = self.encodings[state[row.partner]]
                values = {name: np.zeros_like(value) for name, value in partner.items()}
            else:
                values = dict(self.encodings[text])
            feeds.append({**values, **row.extra})
        lengths = [f[UNET_CONTEXT].shape[0] for f in feeds]
        calls = []
        for length in dict.fromkeys(lengths):
            members = [index for index, value in enumerate(lengths) if value == length]
            stacked = {name: np.stack([feeds[i][name] for i in members]).astype(dtypes.get(name, np.float32))
                       for name in feeds[members[0]]}
            for value in stacked.values():
                value.flags.writeable = False  # constant while the state lasts: a device engine uploads it once
            rows = None if len(members) == len(feeds) else np.array(members)
            calls.append((rows, stacked))
        return calls


def unet_conditioning(encoders: TextEncoders, engines: dict[str, Engine], resolved: ResolvedRequest,
                      warnings: list[str], timings: dict) -> UnetConditioning:
    """The request's conditioning; each prompt's rows repeated num_images times."""
    request = resolved.request
    options = resolved.text_options
    if options.clip_skip > 1 and not encoders.clip_skip_applies:
        warnings.append(f"clip skip is ignored for {encoders.family} models, as A1111 ignores it")
    steps = request.steps

    def schedule(text: str) -> list[tuple[int, str]]:
        return [(steps, text)] if request.plain_prompt else prompt_schedule(text, steps)

    extras = _family_extras(encoders, resolved)
    guided = resolved.guided
    guidance_input = engines["unet"].inputs.get(TIMESTEP_COND) if "unet" in engines else None
    if guidance_input is not None:  # an LCM-distilled UNet: guidance through an embedding, no unconditional half
        guided = False
        extras["positive"][TIMESTEP_COND] = guidance_embedding(float(request.guidance_scale), guidance_input.shape[1])
        if request.negative_prompt is not None:
            warnings.append("this latent consistency model takes no negative prompt (guidance is built in): "
                            "it was not used")
    elif request.sampler in CONSISTENCY_SAMPLERS and request.guidance_scale > CONSISTENCY_GUIDANCE_MAX:
        warnings.append(f"the {request.sampler} sampler on a UNet that is not consistency-distilled runs classifier-free "
                        f"guidance at {request.guidance_scale:g} (two UNet batches a step); LCM/TCD-LoRAs are made "
                        f"for guidance 1 to {CONSISTENCY_GUIDANCE_MAX:g}, and without such a LoRA few steps stay noisy")
    positive = [schedule(p) for p in resolved.texts]
    zero_negative = encoders.sdxl is not None and encoders.sdxl.force_zeros_for_empty_prompt \
        and request.negative_prompt is None
    negative = [[(steps, ZEROS)] if zero_negative else schedule(n) for n in resolved.negatives] if guided else []
    texts = list(dict.fromkeys(t for s in positive + negative for _, t in s if t is not ZEROS))
    used: dict[str, None] = {}
    positive_texts = {t for s in positive for _, t in s}
    negative_texts = frozenset(t for s in negative for _, t in s if t is not ZEROS and t not in positive_texts)
    encoded = encoders.encode(texts, engines, options, timings, used, negative_texts)
    encodings = {}
    for text, encoding in zip(texts, encoded):
        encodings[text] = {UNET_CONTEXT: encoding.hidden}
        if encoders.sdxl is not None:
            encodings[text][TEXT_EMBEDS] = encoding.pooled
    rows = []
    half = len(resolved.prompts) * request.num_images
    for kind, schedules in (("negative", negative), ("positive", positive)):
        for index, entries in enumerate(schedules):
            for _ in range(request.num_images):
                partner = len(rows) + half if entries[0][1] is ZEROS else None
                rows.append(Row([e for e, _ in entries], [t for _, t in entries], dict(extras[kind]), partner))
    if not request.plain_prompt and any(COMPOSABLE_AND.search(p) for p in resolved.texts):
        warnings.append("AND (A1111's composable diffusion) is not supported: it is read as a word")
    return UnetConditioning(rows, encodings, guided, tuple(used))


def _family_extras(encoders: TextEncoders, resolved: ResolvedRequest) -> dict[str, dict[str, np.ndarray]]:
    """Per-row feeds besides the text, for negative and positive rows (SDXL's time ids)."""
    if encoders.sdxl is None:
        return {"negative": {}, "positive": {}}
    from sdrt.runtime.families.sdxl import time_id_rows

    return time_id_rows(encoders.sdxl, resolved)
