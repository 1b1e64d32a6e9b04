"""The nodes sdrt runs: one registry, the source of /object_info, of validation and of execution.
A node is its inputs (a type name, or a list of choices computed when asked: models, samplers),
its outputs, and a function from its inputs to its outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: ComfyUI's primitive input types, and what a workflow's value must be for each.
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "INT": (int,),
    "FLOAT": (int, float),
    "STRING": (str,),
    "BOOLEAN": (bool,),
}
#: ComfyUI's widest INT range (seeds are 64-bit there).
INT_MAX = 0xFFFFFFFFFFFFFFFF
#: What ComfyUI's sizes take: multiples of 8 up to its MAX_RESOLUTION.
MAX_RESOLUTION = 16384
SIZE_STEP = 8


@dataclass(frozen=True)
class Input:
    """One input: `kind` is a type name (INT, MODEL, ...) or a function of the context that lists
    a COMBO's choices. Numbers carry ComfyUI's default/min/max/step."""

    kind: str | Callable[[Any], list[str]]
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    multiline: bool = False
    #: A COMBO may also take values outside its listed choices that this accepts (model names as
    #: ComfyUI clients write them, "NAME.safetensors").
    accepts: Callable[[Any, Any], bool] | None = None
    #: A COMBO's values ComfyUI has and sdrt does not run, with what each would need.
    refusals: Mapping[str, str] | None = None

    def choices(self, context) -> list[str] | None:
        return None if isinstance(self.kind, str) else list(self.kind(context))

    def describe(self, context) -> list:
        options: dict[str, Any] = {}
        for key, value in (
            ("default", self.default),
            ("min", self.minimum),
            ("max", self.maximum),
            ("step", self.step),
        ):
            if value is not None:
                options[key] = value
        if self.multiline:
            options["multiline"] = True
        choices = self.choices(context)
        return [choices if choices is not None else self.kind, options] if options else [choices or self.kind]


@dataclass(frozen=True)
class NodeSpec:
    name: str
    category: str
    required: dict[str, Input]
    outputs: tuple[str, ...]
    run: Callable[..., tuple]
    output_names: tuple[str, ...] = ()
    optional: dict[str, Input] = field(default_factory=dict)
    output_node: bool = False
    display_name: str = ""
    description: str = ""

    def describe(self, context) -> dict:
        """ComfyUI's /object_info entry."""
        return {
            "input": {
                "required": {name: spec.describe(context) for name, spec in self.required.items()},
                "optional": {name: spec.describe(context) for name, spec in self.optional.items()},
            },
            "input_order": {"required": list(self.required), "optional": list(self.optional)},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name or self.name,
            "description": self.description,
            "python_module": "nodes",
            "category": self.category,
            "output_node": self.output_node,
        }


NODES: dict[str, NodeSpec] = {}


def node(name: str, category: str, required: dict[str, Input], outputs: tuple[str, ...], **options):
    """Registers the decorated function as node `name`."""

    def register(run: Callable[..., tuple]) -> Callable[..., tuple]:
        if name in NODES:
            raise ValueError(f"node {name} is registered twice")
        NODES[name] = NodeSpec(name, category, required, outputs, run, **options)
        return run

    return register


#: ComfyUI nodes sdrt knows but does not run, with what each would need (the docs list them).
NOT_RUN: dict[str, str] = {
    "ConditioningConcat": "token-wise concatenation of two encodings: a chunk break in ComfyUI's prompt "
    "weighting (which has no BREAK word) for the sampler's prompt",
    "ConditioningAverage": "a blend of two encodings, conditioning_to_strength * to + (1 - it) * from over the "
    "to's tokens (the from's first cond, zero-padded or cut to the to's length) and its pooled output: sdrt "
    "encodes the prompt text inside its loop, so a conditioning would need to carry its encodings",
    "ConditioningZeroOut": "zeros for the encoding and the pooled output: sdrt's loop zeros only SDXL's missing "
    "negative prompt (force_zeros_for_empty_prompt), not a conditioning from a node",
}
