"""What the denoiser gets besides the latents and the timestep, step by step.

Rows are stacked [unconditional; conditional] along the batch when guided (diffusers' order),
each prompt's rows repeated num_images times, consecutively. The family
(sdrt.runtime.families) says which feeds an encoded text gives (SD 1.x/2.x: the hidden states
`encoder_hidden_states`; SDXL: also the pooled `text_embeds`), which per-row feeds are added
(SDXL's `time_ids`) and whether a missing negative prompt becomes zeros.

Prompt editing and alternation (sdrt.runtime.text.prompts.schedule) make a row's text change during
denoising; each distinct text is encoded once. Rows whose texts have different chunk counts
cannot share a denoiser call: they run in one call per length, which is what A1111 does by default
for a prompt and negative prompt of different lengths (its `pad_cond_uncond` is off), and keeps
a prompt's image independent of what it is batched with.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.guiders import NoGuidance
from sdrt.runtime.loop.timings import Timings
from sdrt.runtime.request_resolve import ResolvedRequest
from sdrt.runtime.text.encoders import TextEncoders
from sdrt.runtime.text.prompts.schedule import prompt_schedule

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


class Conditioning:
    """The denoiser's conditioning feeds at each step, as calls: (rows, feeds), `rows` the batch
    rows a call covers (None: all of them, in order). Rows share a call when their
    `sequence_feed` (the family's text sequence) has the same length."""

    def __init__(
        self,
        rows: list[Row],
        encodings: dict[str, dict[str, np.ndarray]],
        guided: bool,
        sequence_feed: str,
        embeddings: tuple[str, ...] = (),
    ):
        self.sequence_feed = sequence_feed
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
                assert row.partner is not None  # a ZEROS row has its partner
                partner = self.encodings[state[row.partner]]
                values = {name: np.zeros_like(value) for name, value in partner.items()}
            else:
                values = dict(self.encodings[text])
            feeds.append({**values, **row.extra})
        lengths = [f[self.sequence_feed].shape[0] for f in feeds]
        calls = []
        for length in dict.fromkeys(lengths):
            members = [index for index, value in enumerate(lengths) if value == length]
            stacked = {
                name: np.stack([feeds[i][name] for i in members]).astype(dtypes.get(name, np.float32))
                for name in feeds[members[0]]
            }
            for value in stacked.values():
                value.flags.writeable = False  # constant while the state lasts: a device engine uploads it once
            rows = None if len(members) == len(feeds) else np.array(members)
            calls.append((rows, stacked))
        return calls


def clip_skip_warning(encoders: TextEncoders, resolved: ResolvedRequest, warnings: list[str]) -> None:
    if resolved.text_options.clip_skip > 1 and not encoders.clip_skip_applies:
        warnings.append(f"clip skip is ignored for {encoders.family.name} models, as A1111 ignores it")


def encode_conditioning(
    encoders: TextEncoders,
    engines: dict[str, Engine],
    resolved: ResolvedRequest,
    guider: NoGuidance,
    warnings: list[str],
    timings: Timings,
) -> Conditioning:
    """The request's conditioning for `guider`; each prompt's rows repeated num_images times."""
    request = resolved.request
    options = resolved.text_options
    steps = request.steps

    def schedule(text: str) -> list[tuple[int, str]]:
        plain = request.plain_prompt or not options.emphasis.a1111_syntax  # ComfyUI's: no prompt editing
        return [(steps, text)] if plain else prompt_schedule(text, steps)

    family = encoders.family
    extras = family.row_feeds(encoders.manifest, resolved)
    extras["positive"].update(guider.row_feeds())
    guided = guider.unconditional
    positive = [schedule(p) for p in resolved.texts]
    zero_negative = family.zero_negative(encoders.manifest, request)
    negative = [[(steps, ZEROS)] if zero_negative else schedule(n) for n in resolved.negatives] if guided else []
    # The texts without ZEROS (typed object: a sentinel) are the prompts' strings.
    texts = cast(list[str], list(dict.fromkeys(t for s in positive + negative for _, t in s if t is not ZEROS)))
    used: dict[str, None] = {}
    positive_texts = {t for s in positive for _, t in s}
    negative_texts = cast(
        frozenset[str], frozenset(t for s in negative for _, t in s if t is not ZEROS and t not in positive_texts)
    )
    encoded = encoders.encode(texts, engines, options, timings, used, negative_texts, warnings)
    encodings = {}
    for text, encoding in zip(texts, encoded):
        encodings[text] = family.text_feeds(encoding)
    rows: list[Row] = []
    half = len(resolved.prompts) * request.num_images
    for kind, schedules in (("negative", negative), ("positive", positive)):
        for entries in schedules:
            for _ in range(request.num_images):
                partner = len(rows) + half if entries[0][1] is ZEROS else None
                rows.append(Row([e for e, _ in entries], [t for _, t in entries], dict(extras[kind]), partner))
    a1111_syntax = not request.plain_prompt and options.emphasis.a1111_syntax
    if a1111_syntax and any(COMPOSABLE_AND.search(p) for p in resolved.texts):
        warnings.append("AND (A1111's composable diffusion) is not supported: it is read as a word")
    return Conditioning(rows, encodings, guided, family.text_sequence_feed, tuple(used))
