"""How each GenerationRequest field batches, declared once beside the field.

Every field of `GenerationRequest` (sdrt.runtime.request) carries its policy in its dataclass
metadata, `field(..., metadata=SHARED)`; the server's batcher (sdrt.serve.batching) derives
its lists from these declarations. A field that declares none is refused when the lists are
read (`policies`), so a new setting cannot silently run with another request's value.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType

#: The dataclass-metadata key that holds a field's Batching.
BATCHING = "sdrt.batching"


class Batching(enum.Enum):
    """What requests that share one generate() call must agree on for a field."""

    SHARED = "shared"  # equal across a batch: the shared call runs with the one value
    PER_ROW = "per_row"  # may differ: the shared call takes one value per request (the pipeline's rows)
    ALONE = "alone"  # a request that sets it (is_set) runs alone


def batching(policy: Batching) -> Mapping[str, Batching]:
    """The metadata that declares a field's policy."""
    return MappingProxyType({BATCHING: policy})


# The declarations as GenerationRequest writes them: `steps: int = field(default=..., metadata=SHARED)`.
SHARED, PER_ROW, ALONE = (batching(policy) for policy in (Batching.SHARED, Batching.PER_ROW, Batching.ALONE))


def policies(request_type: type) -> dict[str, Batching]:
    """Each field of a dataclass (GenerationRequest) and its declared policy, in field order."""
    found = {}
    for item in dataclasses.fields(request_type):
        policy = item.metadata.get(BATCHING)
        if not isinstance(policy, Batching):
            raise TypeError(
                f"{request_type.__name__}.{item.name} declares no batching policy "
                f"(metadata=SHARED, PER_ROW or ALONE from {__name__})"
            )
        found[item.name] = policy
    return found


def fields_with(request_type: type, policy: Batching) -> tuple[str, ...]:
    """The fields of `request_type` that declare `policy`, in field order."""
    return tuple(name for name, declared in policies(request_type).items() if declared is policy)


def is_set(value) -> bool:
    """Whether an ALONE field is set: anything but None or an empty list (controlnets' default)."""
    return value is not None and not (isinstance(value, (list, tuple)) and len(value) == 0)
