"""The runtime's structure, checked: argument counts, the family registry as the one list of
families, the typed timings recorder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import sdrt.runtime
from sdrt.runtime.families import FAMILIES, FAMILY_NAMES, family_named
from sdrt.runtime.features.controlnet.manifest import FAMILIES as CONTROLNET_FAMILIES
from sdrt.runtime.loop.timings import MEASURES, UNET_STEPS, Timings
from sdrt.runtime.manifest_checks import SCHEMA_PATH

RUNTIME = Path(sdrt.runtime.__file__).parent
#: At most this many required positional arguments (keyword-only ones are named at every call).
MAX_REQUIRED_POSITIONAL = 6


def required_positional(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    arguments = function.args
    positional = arguments.posonlyargs + arguments.args
    required = len(positional) - len(arguments.defaults)
    if positional and positional[0].arg in ("self", "cls"):
        required -= 1
    return required


def test_no_runtime_function_takes_more_than_six_required_positional_arguments():
    offenders = []
    for path in sorted(RUNTIME.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and required_positional(node) > MAX_REQUIRED_POSITIONAL
            ):
                offenders.append(f"{path.relative_to(RUNTIME)}:{node.lineno} {node.name}")
    assert offenders == []


def test_the_counter_sees_a_long_signature():
    tree = ast.parse("def f(self, a, b, c, d, e, f, g=1): pass\ndef h(a, b, c, d, e, f, g): pass")
    assert [required_positional(node) for node in tree.body] == [6, 7]


def test_the_manifest_schema_lists_the_exported_families_of_the_registry():
    schema = json.loads(Path(SCHEMA_PATH).read_text(encoding="utf-8"))
    listed = schema["properties"]["family"]["enum"]
    assert sorted(listed) == sorted(name for name, family in FAMILIES.items() if family.exported)


def test_controlnet_families_come_from_the_registry():
    assert set(CONTROLNET_FAMILIES) == {f.controlnet_family for f in FAMILIES.values() if f.controlnet_family}
    assert set(CONTROLNET_FAMILIES) <= set(FAMILY_NAMES)


def test_every_family_names_itself_and_an_unknown_one_is_one_clear_error():
    for name, family in FAMILIES.items():
        assert family.name == name and family_named(name) is family
        assert family.denoiser.component and family.display_name
    with pytest.raises(Exception, match="unknown model family 'sd4'; sdrt runs sd1"):
        family_named("sd4")


def test_timings_accept_declared_measures_only():
    timings = Timings()
    with timings.stage("text_encoder"):
        pass
    timings.call(UNET_STEPS, 0.5)
    timings.call(UNET_STEPS, 0.25)
    assert set(timings) == {"text_encoder", UNET_STEPS} and timings[UNET_STEPS] == [0.5, 0.25]
    assert timings.total(UNET_STEPS) == 0.75 and timings.total("vae_decoder") == 0.0
    with pytest.raises(KeyError, match="not a declared measure"):
        timings.add("text_encodr", 1.0)
    with pytest.raises(KeyError, match="not a per-call measure"):
        timings.call("total", 1.0)


def test_two_passes_merge_per_measure_and_keep_the_first_pass_totals():
    first, second = Timings({"total": 1.0, UNET_STEPS: [0.1]}), Timings({"total": 2.0, UNET_STEPS: [0.2, 0.3]})
    merged = first.merged(second)
    assert dict(merged) == {"first_pass_total": 1.0, "total": 3.0, UNET_STEPS: [0.1, 0.2, 0.3]}
    assert all(key in MEASURES for key in ("total", UNET_STEPS))
    assert dict(first.plus(second)) == {"total": 3.0, UNET_STEPS: [0.1, 0.2, 0.3]}  # per-image passes, as one
