"""A workflow (ComfyUI's API format: node id -> {class_type, inputs}, a link being [node id, output
index]) checked as ComfyUI checks it, with ComfyUI's error body, and ordered for execution."""

from __future__ import annotations

from typing import Any

from sdrt.serve.comfy.nodes import NODES, NOT_RUN, PRIMITIVES, Input, NodeSpec

#: Deeper link chains than this are refused (a workflow is a DAG a person built).
MAX_NODES = 2000


class WorkflowError(Exception):
    """A workflow ComfyUI would refuse: `body` is ComfyUI's 400 answer."""

    def __init__(self, body: dict):
        super().__init__(body["error"]["message"])
        self.body = body


def _error(kind: str, message: str, details: str = "", **extra) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _refuse(kind: str, message: str, details: str = "", node_errors: dict | None = None) -> WorkflowError:
    return WorkflowError({"error": _error(kind, message, details), "node_errors": node_errors or {}})


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], int)
    )


def _check_value(name: str, spec: Input, value: Any, context) -> dict | None:
    choices = spec.choices(context)
    if choices is not None:
        if value not in choices and not (spec.accepts is not None and spec.accepts(context, value)):
            if spec.refusals is not None and value in spec.refusals:
                detail = f"{name}: '{value}' is not run by sdrt: {spec.refusals[value]}"
                return _error("value_not_in_list", "Value not in list", detail, input_name=name)
            shown = ", ".join(map(str, choices[:20]))
            return _error(
                "value_not_in_list", "Value not in list", f"{name}: '{value}' not in [{shown}]", input_name=name
            )
        return None
    kinds = PRIMITIVES.get(spec.kind)
    if kinds is None:
        return _error("invalid_input_type", f"{name} must be a link to a {spec.kind} output", name, input_name=name)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        return _error(
            "invalid_input_type", f"Failed to convert an input value to a {spec.kind} value", name, input_name=name
        )
    if spec.kind in ("INT", "FLOAT"):
        if value != value or value in (float("inf"), float("-inf")):
            return _error("invalid_input_type", f"{name} is not a finite number", name, input_name=name)
        if spec.minimum is not None and value < spec.minimum:
            return _error(
                "value_smaller_than_min", f"Value {value} smaller than min of {spec.minimum}", name, input_name=name
            )
        if spec.maximum is not None and value > spec.maximum:
            return _error(
                "value_bigger_than_max", f"Value {value} bigger than max of {spec.maximum}", name, input_name=name
            )
    return None


def _check_node(node_id: str, prompt: dict, spec: NodeSpec, context) -> list[dict]:
    inputs = prompt[node_id].get("inputs", {})
    if not isinstance(inputs, dict):
        return [_error("invalid_prompt", "inputs must be an object", "inputs")]
    errors = []
    for name, input_spec in {**spec.required, **spec.optional}.items():
        if name not in inputs:
            if name in spec.required:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = inputs[name]
        if is_link(value):
            source_id, index = str(value[0]), value[1]
            source = prompt.get(source_id)
            source_spec = NODES.get(source.get("class_type")) if isinstance(source, dict) else None
            if source_spec is None or not 0 <= index < len(source_spec.outputs):
                errors.append(_error("bad_linked_input", "Bad linked input", f"{name}: {value}", input_name=name))
            elif source_spec.outputs[index] != input_spec.kind:
                errors.append(
                    _error(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        f"{name}, received_type({source_spec.outputs[index]}) mismatch input_type({input_spec.kind})",
                        input_name=name,
                    )
                )
        else:
            problem = _check_value(name, input_spec, value, context)
            if problem is not None:
                errors.append(problem)
    return errors


def validate(prompt: Any, context) -> list[str]:
    """The output nodes to run, or WorkflowError with ComfyUI's body."""
    if not isinstance(prompt, dict) or not prompt:
        raise _refuse("invalid_prompt", "Invalid prompt: the prompt must be an object of nodes")
    if len(prompt) > MAX_NODES:
        raise _refuse("invalid_prompt", f"Invalid prompt: more than {MAX_NODES} nodes")
    for node_id, entry in prompt.items():
        if not isinstance(entry, dict) or "class_type" not in entry:
            raise _refuse(
                "invalid_prompt",
                f"Cannot execute because a node is missing the class_type property.: Node ID '#{node_id}'",
            )
        class_type = entry["class_type"]
        if class_type not in NODES:
            why = f" ({NOT_RUN[class_type]})" if class_type in NOT_RUN else ""
            raise _refuse(
                "invalid_prompt",
                f"Cannot execute because node {class_type} does not exist.{why}",
                f"Node ID '#{node_id}'",
            )
    outputs = [node_id for node_id, entry in prompt.items() if NODES[entry["class_type"]].output_node]
    if not outputs:
        raise _refuse("prompt_no_outputs", "Prompt has no outputs")
    node_errors: dict[str, dict] = {}
    for output in outputs:
        for node_id in order(prompt, [output]):
            errors = _check_node(node_id, prompt, NODES[prompt[node_id]["class_type"]], context)
            if errors:
                entry = node_errors.setdefault(
                    node_id, {"errors": errors, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]}
                )
                if output not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(output)
    if node_errors:
        raise _refuse("prompt_outputs_failed_validation", "Prompt outputs failed validation", node_errors=node_errors)
    return outputs


def order(prompt: dict, outputs: list[str]) -> list[str]:
    """The nodes the outputs need, each after the nodes it links to (a cycle is an error)."""
    done: list[str] = []
    state: dict[str, str] = {}
    for output in outputs:
        stack: list[tuple[str, bool]] = [(output, False)]
        while stack:
            node_id, expanded = stack.pop()
            if expanded:
                state[node_id] = "done"
                done.append(node_id)
                continue
            if state.get(node_id) == "done":
                continue
            if state.get(node_id) == "open":
                raise _refuse("invalid_prompt", "Invalid prompt: the workflow has a cycle", f"Node ID '#{node_id}'")
            state[node_id] = "open"
            stack.append((node_id, True))
            for value in prompt[node_id].get("inputs", {}).values():
                if is_link(value) and str(value[0]) in prompt and state.get(str(value[0])) != "done":
                    stack.append((str(value[0]), False))
    return done
