"""Z-Image's text, as ZImagePipeline._encode_prompt computes it: each prompt wrapped in Qwen3's
chat template and tokenized (sdrt.runtime.text.qwen_tokenizer, cut at the export's
max_sequence_length with a warning), the Qwen3 encoder's hidden_states[-2] run with the
attention mask (sdrt.runtime.text.qwen_encoder), and only the real positions kept: a text's
encoding is [its token count, width], so texts of different lengths run in separate
transformer calls (sdrt.runtime.loop.conditioning groups rows by length).
"""

from __future__ import annotations

from pathlib import Path

from sdrt.errors import ModelFolderError
from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.timings import Timings
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.text.encoders import TextEncoding
from sdrt.runtime.text.flux_encoders import FluxTextEncoders
from sdrt.runtime.text.prompts.options import TextOptions
from sdrt.runtime.text.qwen_encoder import QwenTextEncoder
from sdrt.runtime.text.qwen_tokenizer import QwenTokenizer


class ZImageTextEncoders(FluxTextEncoders):
    """The Qwen3 encoder of a Z-Image export (the interface the loop reads from TextEncoders)."""

    def __init__(self, manifest: Manifest, qwen: QwenTokenizer, names: list[str]):
        super().__init__(manifest, None, None, names)  # type: ignore[arg-type]
        self.tokenizers = [qwen]

    @classmethod
    def load(cls, folder: Path, manifest: Manifest, embeddings=None) -> ZImageTextEncoders:
        if embeddings:
            raise ModelFolderError("Z-Image exports take no textual-inversion embeddings")
        spec = manifest.flux
        if spec is None:
            raise ModelFolderError("a Z-Image export needs the manifest's flux section; re-export the model")
        qwen = QwenTokenizer.from_folder(folder / spec.tokenizers[0], spec.max_sequence_length)
        return cls(manifest, qwen, list(spec.text_encoders))

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
        (qwen,) = self.tokenizers
        encoding = QwenTextEncoder(qwen, engines[self.names[0]], self.max_rows).encode(texts, timings)
        self._warn_cut("Qwen", encoding.tokens, qwen.max_length, texts, negatives, warnings)
        return [TextEncoding(states, None) for states in encoding.rows()]
