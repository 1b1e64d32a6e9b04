"""FLUX.1's text: CLIP-L's pooled output and T5's hidden states, as FluxPipeline.encode_prompt
computes them. The prompt is plain text for both tokenizers (diffusers applies no weighting):
CLIP's ids are cut to its 77 tokens (bos, 75, eos), T5's padded or cut to the export's
`max_sequence_length`; what either cut is reported as a warning, as diffusers logs it.
Textual-inversion embeddings are not taken (a FLUX request refuses them by name).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.timings import TOKENIZE, Timings
from sdrt.runtime.manifest import BATCH, LAST_HIDDEN, POOLED, Manifest
from sdrt.runtime.text.embeddings import EmbeddingSet
from sdrt.runtime.text.encoders import TextEncoding
from sdrt.runtime.text.prompts.options import TextOptions
from sdrt.runtime.text.t5_tokenizer import T5Tokenizer
from sdrt.runtime.text.tokenizer import ClipTokenizer, TokenizedPrompts

SHOWN_DROPPED_CHARS = 60


class FluxTextEncoders:
    """The encoders of a FLUX export (the same interface the loop reads from TextEncoders)."""

    clip_skip_applies = False

    def __init__(self, manifest: Manifest, clip: ClipTokenizer, t5: T5Tokenizer, names: list[str]):
        self.manifest = manifest
        self.family = manifest.model_family
        self.tokenizers: list = [clip, t5]
        self.names = names
        self.embeddings = EmbeddingSet()
        batch = manifest.dims.get(BATCH)
        self.max_rows = batch.max if batch is not None else None

    @classmethod
    def load(cls, folder: Path, manifest: Manifest, embeddings=None) -> FluxTextEncoders:
        if embeddings:
            raise ModelFolderError("FLUX.1 exports take no textual-inversion embeddings")
        flux = manifest.flux
        if flux is None:
            raise ModelFolderError("a FLUX.1 export needs the manifest's flux section; re-export the model")
        (clip_name, t5_name), (clip_folder, t5_folder) = flux.text_encoders, flux.tokenizers
        clip = ClipTokenizer.from_folder(folder / clip_folder)
        if clip.max_length != manifest.text_length:
            raise ModelFolderError(
                f"{clip_folder} length {clip.max_length} differs from the text encoder's {manifest.text_length}"
            )
        t5 = T5Tokenizer.from_folder(folder / t5_folder, flux.max_sequence_length)
        return cls(manifest, clip, t5, [clip_name, t5_name])

    def encode(
        self,
        texts: list[str],
        engines: dict[str, Engine],
        options: TextOptions,
        timings: Timings | None = None,
        used: dict | None = None,
        negatives: frozenset[str] = frozenset(),
        warnings: list[str] | None = None,
    ) -> list[TextEncoding]:
        """One encoding per text: T5's hidden states [max_sequence_length, width] and CLIP's
        pooled embedding."""
        clip, t5 = self.tokenizers
        started = time.perf_counter()
        clip_ids, t5_ids = clip.encode(texts), t5.encode(texts)
        if timings is not None:
            timings.add(TOKENIZE, time.perf_counter() - started)
        for name, ids, limit in (("CLIP", clip_ids, clip.max_length), ("T5", t5_ids, t5.max_length)):
            self._warn_cut(name, ids, limit, texts, negatives, warnings)
        pooled = self._run(engines[self.names[0]], clip_ids.input_ids, POOLED)
        hidden = self._run(engines[self.names[1]], t5_ids.input_ids, LAST_HIDDEN)
        return [TextEncoding(hidden[row], pooled[row]) for row in range(len(texts))]

    def _run(self, engine: Engine, ids: np.ndarray, output: str) -> np.ndarray:
        step = self.max_rows or len(ids)
        dtype = engine.input_dtype("input_ids")
        parts = [engine.run({"input_ids": ids[i : i + step].astype(dtype)})[output] for i in range(0, len(ids), step)]
        return np.concatenate(parts).astype(np.float32)

    @staticmethod
    def _warn_cut(name, ids: TokenizedPrompts, limit, texts, negatives, warnings) -> None:
        if warnings is None:
            return
        for text, dropped in zip(texts, ids.dropped_text):
            if dropped:
                which = "negative prompt" if text in negatives else "prompt"
                shown = dropped if len(dropped) <= SHOWN_DROPPED_CHARS else dropped[:SHOWN_DROPPED_CHARS] + "..."
                warnings.append(f"the {which} is longer than {name}'s {limit} tokens; this was cut: {shown!r}")


class OneTokenizerTextEncoders(FluxTextEncoders):
    """An export whose flux section names one text encoder and its tokenizer (Chroma's T5,
    Z-Image's Qwen3): loaded the same way; each subclass encodes as its pipeline does."""

    #: The family's name in errors, and the class that reads the tokenizer folder.
    label: ClassVar[str]
    tokenizer_class: ClassVar[type]
    #: Whether the tokenizer fills FluxTextEncoders' T5 slot.
    t5_slot: ClassVar[bool] = False

    def __init__(self, manifest: Manifest, tokenizer, names: list[str]):
        super().__init__(manifest, None, tokenizer if self.t5_slot else None, names)  # type: ignore[arg-type]
        self.tokenizers = [tokenizer]

    @classmethod
    def load(cls, folder: Path, manifest: Manifest, embeddings=None):
        if embeddings:
            raise ModelFolderError(f"{cls.label} exports take no textual-inversion embeddings")
        spec = manifest.flux
        if spec is None:
            raise ModelFolderError(f"a {cls.label} export needs the manifest's flux section; re-export the model")
        tokenizer = cls.tokenizer_class.from_folder(folder / spec.tokenizers[0], spec.max_sequence_length)
        return cls(manifest, tokenizer, list(spec.text_encoders))
