"""FLUX.2 [klein]'s text, as Flux2KleinPipeline._get_qwen3_prompt_embeds computes it: each
prompt wrapped and padded to the export's max_sequence_length (sdrt.runtime.text.klein_tokenizer),
the Qwen3 encoder run with the attention mask (sdrt.runtime.text.qwen_encoder), and the hidden
states of the export's layers joined per token, layer after layer ([tokens, layers x width]:
the pipeline's stack on dim 1, then permute and reshape). A cut prompt is a warning, as FLUX's.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.timings import Timings
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.text.encoders import TextEncoding
from sdrt.runtime.text.flux_encoders import FluxTextEncoders
from sdrt.runtime.text.klein_tokenizer import KleinTokenizer
from sdrt.runtime.text.prompts.options import TextOptions
from sdrt.runtime.text.qwen_encoder import QwenTextEncoder, layer_output


class Flux2TextEncoders(FluxTextEncoders):
    """The Qwen3 encoder of a FLUX.2 klein export (the interface the loop reads from TextEncoders)."""

    def __init__(self, manifest: Manifest, tokenizer: KleinTokenizer, name: str, layers: list[int]):
        super().__init__(manifest, None, None, [name])  # type: ignore[arg-type]
        self.tokenizers = [tokenizer]
        self.layers = [layer_output(index) for index in layers]

    @classmethod
    def load(cls, folder: Path, manifest: Manifest, embeddings=None) -> Flux2TextEncoders:
        if embeddings:
            raise ModelFolderError("FLUX.2 exports take no textual-inversion embeddings")
        spec = manifest.flux2
        if spec is None:
            raise ModelFolderError("a FLUX.2 export needs the manifest's flux2 section; re-export the model")
        tokenizer = cast(KleinTokenizer, KleinTokenizer.from_folder(folder / spec.tokenizer, spec.max_sequence_length))
        return cls(manifest, tokenizer, spec.text_encoder, spec.text_layers)

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
        (tokenizer,) = self.tokenizers
        encoder = QwenTextEncoder(tokenizer, engines[self.names[0]], self.max_rows)
        if encoder.outputs != self.layers:
            raise ModelFolderError(
                f"the text encoder gives {', '.join(encoder.outputs)}, the manifest reads {', '.join(self.layers)}; "
                "re-export the model"
            )
        encoding = encoder.encode(texts, timings)
        # Reads only each row's dropped_text, which QwenTokens has as TokenizedPrompts does.
        self._warn_cut("Qwen3", encoding.tokens, tokenizer.max_length, texts, negatives, warnings)  # type: ignore[arg-type]
        joined = np.concatenate(encoding.hidden, axis=-1)
        return [TextEncoding(joined[row], None) for row in range(len(texts))]
