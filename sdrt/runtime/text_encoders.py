"""The model's text encoders with their tokenizers, as the manifest lists them: prompts in,
hidden states (concatenated along the feature axis when there are several, as SDXL does) and
the last encoder's pooled embedding out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.runtime.engines import Engine
from sdrt.runtime.manifest import LAST_HIDDEN, PENULTIMATE_HIDDEN, POOLED, PROJECTED, Manifest, SdxlSpec
from sdrt.runtime.tokenizer import ClipTokenizer

#: The last encoder's pooled output, projected where it has a projection.
POOLED_OUTPUTS = (PROJECTED, POOLED)


@dataclass
class TextEncoding:
    hidden: np.ndarray  # float32 [prompts, text_length, hidden]
    pooled: np.ndarray | None  # float32 [prompts, pooled width] from the last encoder


class TextEncoders:
    def __init__(self, sdxl: SdxlSpec | None, tokenizers: list[ClipTokenizer], names: list[str]):
        self.sdxl = sdxl  # the manifest's SDXL settings, None for SD 1.x/2.x
        self.tokenizers = tokenizers
        self.names = names
        self.hidden_output = LAST_HIDDEN if sdxl is None else PENULTIMATE_HIDDEN

    @classmethod
    def load(cls, folder: Path, manifest: Manifest) -> "TextEncoders":
        tokenizers, names = [], []
        for component, tokenizer_folder in manifest.text_encoders:
            tokenizer = ClipTokenizer.from_folder(folder / tokenizer_folder)
            if tokenizer.max_length != manifest.text_length:
                raise ModelFolderError(f"{tokenizer_folder} length {tokenizer.max_length} differs from the text "
                                       f"encoder's {manifest.text_length}")
            tokenizers.append(tokenizer)
            names.append(component)
        return cls(manifest.sdxl, tokenizers, names)

    def encode(self, prompts: list[str], engines: dict[str, Engine], warnings: list[str],
               timings: dict | None = None) -> TextEncoding:
        """Each encoder on its tokenizer's ids; a warning names text cut at the length limit."""
        hidden, pooled = [], None
        for tokenizer, name in zip(self.tokenizers, self.names):
            started = time.perf_counter()
            tokens = tokenizer.encode(prompts)
            if timings is not None:
                timings["tokenize"] = timings.get("tokenize", 0.0) + time.perf_counter() - started
            if name == self.names[0]:
                for dropped in tokens.dropped_text:
                    if dropped:
                        warnings.append(f"the prompt is longer than {tokenizer.max_length - 2} tokens; "
                                        f"this part was dropped: {dropped!r}")
            engine = engines[name]
            outputs = engine.run({"input_ids": tokens.input_ids.astype(engine.input_dtype("input_ids"))})
            hidden.append(outputs[self.hidden_output].astype(np.float32))
            pooled = next((outputs[key].astype(np.float32) for key in POOLED_OUTPUTS if key in outputs), None)
        return TextEncoding(np.concatenate(hidden, axis=-1) if len(hidden) > 1 else hidden[0], pooled)
