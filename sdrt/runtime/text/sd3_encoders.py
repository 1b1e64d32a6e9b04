"""Stable Diffusion 3 / 3.5's text, as StableDiffusion3Pipeline.encode_prompt computes it: CLIP-L's
and CLIP-G's penultimate hidden states joined along the width and zero-padded to T5's width,
then joined along the sequence with T5's hidden states (zeros of [max_sequence_length,
joint_attention_dim] for an export without T5, as diffusers without text_encoder_3); the pooled
output is CLIP-L's projected one then CLIP-G's. Every tokenizer reads the same text (the
pipeline's prompt, prompt_2 and prompt_3 default to it), the CLIP encoders in A1111's prompt
language and T5 its plain text (sdrt.runtime.text.sd3_prompts): CLIP's ids are cut to 77
tokens, T5's to `max_sequence_length` (the request's, else the export's), each cut reported as
a warning. Clip skip reads another CLIP layer for the prompts, not the negative prompts
(sdrt.runtime.text.sd3_text_options). Textual-inversion embeddings are not taken.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.timings import TOKENIZE, Timings
from sdrt.runtime.manifest import BATCH, LAST_HIDDEN, PENULTIMATE_HIDDEN, PROJECTED, Manifest
from sdrt.runtime.sd3_spec import CLIP_LAYER_STATES
from sdrt.runtime.text.encoders import TextEncoding
from sdrt.runtime.text.flux_encoders import FluxTextEncoders
from sdrt.runtime.text.prompts.options import TextOptions
from sdrt.runtime.text.sd3_prompts import BREAK_WARNING, has_break, plain_text, prompt_fragments, weighted_clip_ids
from sdrt.runtime.text.sd3_text_options import clip_skip_state
from sdrt.runtime.text.t5_tokenizer import T5Tokenizer
from sdrt.runtime.text.tokenizer import ClipTokenizer

CLIP_NAMES = ("CLIP-L", "CLIP-G")


class Sd3TextEncoders(FluxTextEncoders):
    """The encoders of an SD3 export (the interface the loop reads from TextEncoders)."""

    clip_skip_applies = True  # StableDiffusion3Pipeline's clip_skip

    def __init__(self, manifest: Manifest, clips: list[ClipTokenizer], t5: T5Tokenizer | None, names: list[str]):
        from sdrt.runtime.text.embeddings import EmbeddingSet

        self.manifest = manifest
        self.family = manifest.model_family
        self.tokenizers: list = [*clips, *([t5] if t5 is not None else [])]
        self.clips, self.t5 = clips, t5
        self.names = names
        self.embeddings = EmbeddingSet()
        batch = manifest.dims.get(BATCH)
        self.max_rows = batch.max if batch is not None else None

    @classmethod
    def load(cls, folder: Path, manifest: Manifest, embeddings=None) -> Sd3TextEncoders:
        if embeddings:
            raise ModelFolderError("SD3 exports take no textual-inversion embeddings")
        spec = manifest.sd3
        if spec is None:
            raise ModelFolderError("an SD3 export needs the manifest's sd3 section; re-export the model")
        clips = [ClipTokenizer.from_folder(folder / name) for name in spec.clip_tokenizers]
        for name, clip in zip(spec.clip_tokenizers, clips):
            if clip.max_length != manifest.text_length:
                raise ModelFolderError(
                    f"{name} length {clip.max_length} differs from the text encoder's {manifest.text_length}"
                )
        t5 = None
        if spec.t5_encoder is not None and spec.t5_tokenizer is not None:
            t5 = T5Tokenizer.from_folder(folder / spec.t5_tokenizer, spec.max_sequence_length)
        names = [*spec.clip_encoders, *([spec.t5_encoder] if t5 is not None else [])]
        return cls(manifest, clips, t5, names)

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
        """One encoding per text: [77 + max_sequence_length, joint width] states and the pooled
        [CLIP-L projection + CLIP-G projection] embedding."""
        spec = self.manifest.sd3
        assert spec is not None  # load checked it
        length = options.max_sequence_length or spec.max_sequence_length
        started = time.perf_counter()
        fragments = [
            prompt_fragments(text, options.emphasis, "negative_prompt" if text in negatives else "prompt")
            for text in texts
        ]
        weighted = [weighted_clip_ids(fragments, clip) for clip in self.clips]
        clip_ids = [ids for ids, _ in weighted]
        plain = [plain_text(parts) for parts in fragments]
        t5_ids = self.t5.encode(plain, length) if self.t5 is not None and options.t5 else None
        if timings is not None:
            timings.add(TOKENIZE, time.perf_counter() - started)
        if warnings is not None and has_break(fragments):
            warnings.append(BREAK_WARNING)
        for name, ids, clip in zip(CLIP_NAMES, clip_ids, self.clips):
            self._warn_cut(name, ids, clip.max_length, texts, negatives, warnings)
        states, pooled = [], []
        skipped = np.array([options.clip_skip > 1 and text not in negatives for text in texts])
        for name, (ids, weights) in zip(spec.clip_encoders, weighted):
            outputs = self._run_all(engines[name], ids.input_ids)
            chosen = outputs[PENULTIMATE_HIDDEN]
            if skipped.any():  # the family checked the export has the layers
                layer = outputs[CLIP_LAYER_STATES][:, clip_skip_state(options.clip_skip)]
                chosen = np.where(skipped[:, None, None], layer, chosen)
            states.append(options.emphasis.apply(chosen, weights))
            pooled.append(outputs[PROJECTED])
        clip_states = np.concatenate(states, axis=-1)
        width = spec.joint_attention_dim
        if self.t5 is not None and t5_ids is not None:  # else no T5: its zeros (diffusers without text_encoder_3)
            self._warn_cut("T5", t5_ids, length, texts, negatives, warnings)
            t5_states = self._run(engines[self.names[-1]], t5_ids.input_ids, LAST_HIDDEN)
            width = t5_states.shape[-1]
        else:
            t5_states = np.zeros((len(texts), length, width), np.float32)
        padded = np.zeros((*clip_states.shape[:-1], width), np.float32)
        padded[..., : clip_states.shape[-1]] = clip_states
        hidden = np.concatenate([padded, t5_states], axis=1)
        joined = np.concatenate(pooled, axis=-1)
        return [TextEncoding(hidden[row], joined[row]) for row in range(len(texts))]

    def _run_all(self, engine: Engine, ids: np.ndarray) -> dict[str, np.ndarray]:
        step = self.max_rows or len(ids)
        dtype = engine.input_dtype("input_ids")
        parts = [engine.run({"input_ids": ids[i : i + step].astype(dtype)}) for i in range(0, len(ids), step)]
        return {name: np.concatenate([part[name] for part in parts]).astype(np.float32) for name in parts[0]}
