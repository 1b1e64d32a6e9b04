"""ComfyUI's conditioning nodes sdrt does not run are refused by name, saying what each needs
(ComfyUI's invalid_prompt body), before any model is touched."""

from __future__ import annotations

import pytest

import sdrt.serve.comfy.routes  # noqa: F401  (registers every node sdrt runs)
from sdrt.serve.comfy.graph import WorkflowError, validate
from sdrt.serve.comfy.nodes import NODES, NOT_RUN

#: ComfyUI's conditioning nodes (nodes.py) and a phrase of what sdrt would need for each.
CONDITIONING_NODES = {
    "ConditioningConcat": "token-wise concatenation",
    "ConditioningAverage": "conditioning_to_strength",
    "ConditioningZeroOut": "zeros for the encoding and the pooled output",
}


@pytest.mark.parametrize("class_type", sorted(CONDITIONING_NODES))
def test_a_conditioning_node_sdrt_does_not_run_is_refused_by_name(class_type):
    assert class_type not in NODES and class_type in NOT_RUN
    workflow = {"7": {"class_type": class_type, "inputs": {}}}
    with pytest.raises(WorkflowError) as refused:
        validate(workflow, None)
    error = refused.value.body["error"]
    assert error["type"] == "invalid_prompt"
    assert f"node {class_type} does not exist" in error["message"]
    assert CONDITIONING_NODES[class_type] in error["message"], "what it would need is said"
    assert error["details"] == "Node ID '#7'"
