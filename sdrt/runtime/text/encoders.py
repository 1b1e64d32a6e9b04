"""The model's text encoders with their tokenizers, as the manifest lists them: prompt texts in,
hidden states (concatenated along the feature axis when there are several, as SDXL does) and
the last encoder's pooled embedding out.

Each text is read in A1111's prompt language (sdrt.runtime.text.prompts): its weighted fragments
become chunks of the encoder's length, each chunk is encoded on its own, weighted by the
emphasis mode, and the chunks are concatenated along the sequence axis. The pooled embedding is
the first chunk's, as in A1111. A prompt of one chunk without emphasis gives exactly diffusers'
conditioning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrt.errors import GenerationError, ModelFolderError
from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.timings import TOKENIZE, Timings
from sdrt.runtime.manifest import (
    BATCH,
    EXTRA_EMBEDDINGS,
    LAYER_HIDDEN,
    POOLED,
    PROJECTED,
    UNET_CONTEXT,
    Manifest,
)
from sdrt.runtime.text.embeddings import Embedding, EmbeddingSet, EmbeddingSource, load_embeddings
from sdrt.runtime.text.prompts.chunks import TokenChunks, text_chunks
from sdrt.runtime.text.prompts.options import TextOptions
from sdrt.runtime.text.token_tables import TokenTable
from sdrt.runtime.text.tokenizer import ClipTokenizer

#: The last encoder's pooled output, projected where it has a projection.
POOLED_OUTPUTS = (PROJECTED, POOLED)


@dataclass
class TextEncoding:
    hidden: np.ndarray  # float32 [chunks x encoder length, width]
    pooled: np.ndarray | None  # float32 [pooled width] from the last encoder's first chunk


class TextEncoders:
    def __init__(
        self,
        manifest: Manifest,
        tokenizers: list[ClipTokenizer],
        names: list[str],
        embeddings: EmbeddingSet | None = None,
    ):
        self.embeddings = embeddings or EmbeddingSet()
        self.tables = [
            _token_table(manifest, name, tokenizer, self.embeddings.loaded)
            for name, tokenizer in zip(names, tokenizers)
        ]
        self.manifest = manifest
        self.family = manifest.model_family
        self.tokenizers = tokenizers
        self.names = names
        self.hidden_output = self.family.hidden_output
        batch = manifest.dims.get(BATCH)
        self.max_rows = batch.max if batch is not None else None
        self.max_chunks = _max_chunks(manifest)

    @property
    def clip_skip_applies(self) -> bool:
        """Whether the family's encoders take clip skip (sdrt.runtime.families)."""
        return self.family.clip_skip_applies

    @classmethod
    def load(cls, folder: Path, manifest: Manifest, embeddings: list[EmbeddingSource] | None = None) -> TextEncoders:
        """The tokenizers, and the embeddings of `embeddings` (files and folders) that fit."""
        tokenizers, names = [], []
        for component, tokenizer_folder in manifest.text_encoders:
            tokenizer = ClipTokenizer.from_folder(folder / tokenizer_folder)
            if tokenizer.max_length != manifest.text_length:
                raise ModelFolderError(
                    f"{tokenizer_folder} length {tokenizer.max_length} differs from the text "
                    f"encoder's {manifest.text_length}"
                )
            tokenizers.append(tokenizer)
            names.append(component)
        loaded = load_embeddings(embeddings, lambda e: embedding_misfit(e, manifest)) if embeddings else None
        return cls(manifest, tokenizers, names, loaded)

    def chunks(self, text: str, options: TextOptions, encoder: int = 0, param: str = "prompt") -> TokenChunks:
        """The text's chunks for one encoder's tokenizer and embeddings (the first by default);
        `param` names the text's field in an error."""
        return text_chunks(text, options.emphasis, self.tokenizers[encoder], self.tables[encoder], param)

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
        """One encoding per text: every encoder's chunks, weighted, concatenated. The names of
        the embeddings the texts use are added to `used`; a text in `negatives` that is too
        long is reported as the negative prompt (nothing is cut, so `warnings` gets none)."""
        hidden: list[list[np.ndarray]] = [[] for _ in texts]
        pooled: list[np.ndarray | None] = [None] * len(texts)
        for encoder, (tokenizer, name) in enumerate(zip(self.tokenizers, self.names)):
            started = time.perf_counter()
            chunked = [
                self.chunks(text, options, encoder, "negative_prompt" if text in negatives else "prompt")
                for text in texts
            ]
            if used is not None:
                used.update(dict.fromkeys(e for c in chunked for e in c.embeddings))
            for text, chunks in zip(texts, chunked):
                if self.max_chunks is not None and chunks.count > self.max_chunks:
                    param = "negative_prompt" if text in negatives else "prompt"
                    raise GenerationError(
                        f"the {param.replace('_', ' ')} {_start(text)} needs {chunks.count} chunks of "
                        f"{tokenizer.max_length - 2} tokens; this export takes at most {self.max_chunks}: shorten it, "
                        f"or re-export the model with --max-prompt-chunks {chunks.count}",
                        param,
                    )
            if timings is not None:
                timings.add(TOKENIZE, time.perf_counter() - started)
            ids = np.concatenate([c.ids for c in chunked])
            # ComfyUI's weights move states from the empty prompt's: encoded in the same batch.
            empty = options.emphasis.relative_to_empty and any(np.any(c.weights != 1) for c in chunked)
            if empty:
                ids = np.concatenate([ids, self.chunks("", options, encoder).ids])
            outputs = self._run(engines[name], ids, options, self.tables[encoder])
            empty_states = outputs["hidden"][-1] if empty else None
            row = 0
            for index, chunks in enumerate(chunked):
                rows = slice(row, row + chunks.count)
                row += chunks.count
                states = options.emphasis.apply(outputs["hidden"][rows], chunks.weights, empty_states)
                hidden[index].append(states.reshape(-1, states.shape[-1]))
                if outputs["pooled"] is not None:
                    pooled[index] = outputs["pooled"][rows.start]
        return [TextEncoding(np.concatenate(h, axis=-1) if len(h) > 1 else h[0], p) for h, p in zip(hidden, pooled)]

    def _run(self, engine: Engine, ids: np.ndarray, options: TextOptions, table: TokenTable | None) -> dict:
        """The encoder over all chunk rows, in batches the export accepts."""
        step = self.max_rows or len(ids)
        layer = self._layer(engine, options)
        hidden, pooled = [], []
        extra = {}
        if EXTRA_EMBEDDINGS in engine.inputs:  # no table (a folder without a manifest): the default's one row
            rows = table.rows if table is not None else np.zeros((1, engine.inputs[EXTRA_EMBEDDINGS].shape[1]))
            extra[EXTRA_EMBEDDINGS] = rows.astype(engine.input_dtype(EXTRA_EMBEDDINGS))
        for start in range(0, len(ids), step):
            feeds = {"input_ids": ids[start : start + step].astype(engine.input_dtype("input_ids")), **extra}
            out = engine.run(feeds)
            states = out[self.hidden_output] if layer is None else out[LAYER_HIDDEN][:, layer]
            hidden.append(states.astype(np.float32))
            pooled.append(next((out[key].astype(np.float32) for key in POOLED_OUTPUTS if key in out), None))
        return {"hidden": np.concatenate(hidden), "pooled": None if pooled[0] is None else np.concatenate(pooled)}

    def _layer(self, engine: Engine, options: TextOptions) -> int | None:
        """The index into LAYER_HIDDEN for the clip skip, None for the usual output."""
        if options.clip_skip <= 1 or not self.clip_skip_applies:
            return None
        spec = next((t for t in engine.spec.outputs if t.name == LAYER_HIDDEN), None)
        if spec is None:
            raise GenerationError(
                "this export's text encoder does not give its layers' outputs, which clip skip "
                "needs: re-export the model with this sdrt version",
                "clip_skip",
            )
        layers = spec.shape[1]
        if options.clip_skip > layers:
            raise GenerationError(
                f"clip skip {options.clip_skip} is more than the text encoder's {layers} layers", "clip_skip"
            )
        return layers - options.clip_skip


def _extra_input(manifest: Manifest, component: str):
    spec = manifest.components[component]
    return next((t for t in spec.inputs if t.name == EXTRA_EMBEDDINGS), None)


def embedding_misfit(embedding: Embedding, manifest: Manifest) -> str | None:
    """Why an embedding cannot be used with this model, or None."""
    for component, _ in manifest.text_encoders:
        spec = _extra_input(manifest, component)
        if spec is None:
            raise ModelFolderError(
                f"this export's {component} takes no textual-inversion embeddings: re-export "
                "the model with this sdrt version to use them"
            )
        vectors = embedding.for_encoder(component)
        if vectors is None:
            return f"it has no vectors for {component} (an embedding for another model family)"
        if vectors.shape[1] != spec.shape[1]:
            return (
                f"its vectors are {vectors.shape[1]} wide; this model's {component} takes {spec.shape[1]} "
                "(an embedding for another model family)"
            )
        if len(vectors) > manifest.text_length - 2:
            return f"it has {len(vectors)} vectors; a prompt chunk holds {manifest.text_length - 2}"
    return None


def _token_table(
    manifest: Manifest, component: str, tokenizer: ClipTokenizer, embeddings: list[Embedding]
) -> TokenTable | None:
    """The encoder's extra rows (None for exports made before embeddings, which take none)."""
    spec = _extra_input(manifest, component)
    rows = manifest.token_table_rows.get(component)
    if spec is None or rows is None:
        return None
    table = TokenTable.build(embeddings, component, tokenizer, rows, spec.shape[1])
    limit = manifest.dims[spec.shape[0]].max if isinstance(spec.shape[0], str) else spec.shape[0]
    if len(table.rows) > limit:
        raise ModelFolderError(
            f"the embeddings have {len(table.rows)} vectors for {component}; this export takes at most {limit}"
        )
    return table


def _max_chunks(manifest: Manifest) -> int | None:
    """How many encoder-length chunks the UNet's text context takes: 1 for exports made before
    long prompts (a fixed length), None for a dynamic length without a recorded range (a
    diffusers ONNX folder)."""
    unet = manifest.components.get(manifest.model_family.denoiser.component)
    context = next((t for t in unet.inputs if t.name == UNET_CONTEXT), None) if unet is not None else None
    if context is None or len(context.shape) < 2:
        return 1
    length = context.shape[1]
    if isinstance(length, str):
        if length not in manifest.dims:
            return None
        length = manifest.dims[length].max
    return max(1, length // manifest.text_length)


def _start(text: str, shown: int = 40) -> str:
    return repr(text if len(text) <= shown else text[:shown] + "...")
