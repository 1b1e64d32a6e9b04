"""Naming LoRAs for a request: `--lora PATH[:WEIGHT]` and A1111's `<lora:NAME:WEIGHT>` tags.

A tag is `<lora:NAME>`, `<lora:NAME:WEIGHT>`, `<lora:NAME:TEXT_WEIGHT:UNET_WEIGHT>` or with
A1111's named arguments `te=` / `unet=` (`<lyco:...>` is the same). Tags are removed from the
prompt before it is encoded; the prompt as given is what the image's parameters record.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from sdrt.runtime.features.lora.merge import LoraWeights
from sdrt.runtime.features.lora.weights_map import LoraError

TAG = re.compile(r"<(?:lora|lyco):([^>]*)>", re.IGNORECASE)
NAMED_ARGUMENTS = {"te": "text", "unet": "unet"}
#: Named arguments A1111's networks take that sdrt accepts and does not use.
IGNORED_ARGUMENTS = ("dyn",)
#: The largest LoRA weight (in absolute value). A1111 takes any float, but its useful weights are
#: a few units (slider LoRAs go to about +-10); a weight far past that scales the merged weights
#: out of any range the model works in, and past float32's range gives NaN, never an image.
MAX_LORA_WEIGHT = 100.0


@dataclass(frozen=True)
class LoraRef:
    """One LoRA of a request: a file path or a name in the LoRA folder, and its weights."""

    source: str
    weights: LoraWeights = LoraWeights()

    @classmethod
    def parse(cls, text: str) -> LoraRef:
        """`PATH[:WEIGHT]` (a path that itself holds a colon is taken whole when it exists)."""
        if not isinstance(text, str) or not text.strip():
            raise LoraError("a LoRA must be given as PATH or PATH:WEIGHT")
        head, colon, tail = text.rpartition(":")
        if not colon or Path(text).exists() or "/" in tail or "\\" in tail:
            return cls(text)
        weight = _number(tail, f"--lora {text}")
        return cls(head, LoraWeights(weight, weight))


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LoraError(f"{where}: the weight {text!r} is not a number") from None
    if not math.isfinite(value):
        raise LoraError(f"{where}: the weight {text!r} is not a finite number")
    if abs(value) > MAX_LORA_WEIGHT:
        raise LoraError(f"{where}: the weight {text!r} is outside +-{MAX_LORA_WEIGHT:g}")
    return value


def weights_problem(weights: LoraWeights) -> str | None:
    """What is wrong with LoRA weights built in code (not parsed from text), or None."""
    for value in (weights.text, weights.unet):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"a LoRA weight must be a finite number, got {value!r}"
        if abs(value) > MAX_LORA_WEIGHT:
            return f"a LoRA weight must be within +-{MAX_LORA_WEIGHT:g}, got {value!r}"
    return None


def _tag(body: str) -> LoraRef:
    parts = [part.strip() for part in body.split(":")]
    where = f"<lora:{body}>"
    if not parts[0]:
        raise LoraError(f"{where} names no LoRA")
    positional, named = [], {}
    for part in parts[1:]:
        key, equals, value = part.partition("=")
        if equals:
            if key.strip() in IGNORED_ARGUMENTS:
                continue
            if key.strip() not in NAMED_ARGUMENTS:
                raise LoraError(f"{where}: unknown argument {key.strip()!r} (sdrt takes te= and unet=)")
            named[NAMED_ARGUMENTS[key.strip()]] = _number(value.strip(), where)
        else:
            positional.append(_number(part, where))
    if len(positional) > 2:
        raise LoraError(f"{where} has {len(positional)} weights; give one, or a text and a UNet weight")
    text = positional[0] if positional else 1.0
    unet = positional[1] if len(positional) > 1 else text
    return LoraRef(parts[0], LoraWeights(named.get("text", text), named.get("unet", unet)))


def extract_tags(prompt: str) -> tuple[str, list[LoraRef]]:
    """(the prompt without its LoRA tags, the tags' LoRAs in order)."""
    found = [_tag(match.group(1)) for match in TAG.finditer(prompt)]
    return (TAG.sub("", prompt) if found else prompt), found
