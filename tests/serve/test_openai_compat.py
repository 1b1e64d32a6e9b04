"""The OpenAI drop-in rules (sdrt.serve.openai_compat) on their own: model names, the default
response format, quality presets, styles, and the kept images' expiry and cap (with a clock
the test moves)."""

from __future__ import annotations

import pytest

from sdrt.serve.openai_compat import (
    OPENAI_DEFAULT_STEPS,
    QUALITY_STEPS,
    ImageStore,
    is_openai_model,
    response_format_of,
    steps_of,
    style_of,
)
from sdrt.serve.schemas import RequestError


@pytest.mark.parametrize("name", ["dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "DALL-E-3"])
def test_openai_model_names_are_recognised(name):
    assert is_openai_model(name)


@pytest.mark.parametrize("name", [None, "dalle", "sd15", "gpt-4o"])
def test_other_names_are_not_openai_models(name):
    assert not is_openai_model(name)


def test_response_format_defaults_to_url_only_for_dall_e():
    assert response_format_of(None, "dall-e-2") == response_format_of(None, "dall-e-3") == "url"
    assert response_format_of(None, "gpt-image-1") == response_format_of(None, None) == "b64_json"
    assert response_format_of("b64_json", "dall-e-3") == "b64_json"
    with pytest.raises(RequestError) as refused:
        response_format_of("png", None)
    assert refused.value.param == "response_format"


def test_quality_presets_and_steps_precedence():
    assert steps_of(None, None) == OPENAI_DEFAULT_STEPS
    assert steps_of(None, "hd") == QUALITY_STEPS["hd"] > steps_of(None, "standard")
    assert steps_of(None, "low") < steps_of(None, "medium") < steps_of(None, "high")
    assert steps_of(3, "hd") == 3
    with pytest.raises(RequestError) as refused:
        steps_of(None, "ultra")
    assert refused.value.param == "quality" and "hd" in refused.value.message


def test_style_picks_a_server_style_or_warns():
    assert style_of(None, {}) == (None, None)
    assert style_of("vivid", {"Vivid": object()}) == ("Vivid", None)
    name, warning = style_of("natural", {"Vivid": object()})
    assert name is None and warning.startswith("style:")
    with pytest.raises(RequestError) as refused:
        style_of("moody", {})
    assert refused.value.param == "style"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_kept_images_expire_after_their_ttl():
    clock = Clock()
    store = ImageStore(ttl_s=10, capacity=4, clock=clock)
    first = store.put(b"one")
    clock.now = 5
    second = store.put(b"two")
    clock.now = 9.9
    assert store.get(first) == b"one" and store.get(second) == b"two"
    clock.now = 10
    assert store.get(first) is None and store.get(second) == b"two" and len(store) == 1
    clock.now = 15
    assert store.get(second) is None and len(store) == 0


def test_kept_images_are_capped_oldest_dropped_first():
    store = ImageStore(ttl_s=60, capacity=2, clock=Clock())
    names = [store.put(bytes([index])) for index in range(3)]
    assert store.get(names[0]) is None
    assert [store.get(name) for name in names[1:]] == [b"\x01", b"\x02"]
    assert len(store) == 2 and len(set(names)) == len(names)


def test_docs_state_the_presets_and_defaults_the_code_uses():
    """docs/serve.md's quality table and URL defaults are the code's (ServeSettings, `sdrt serve`)."""
    import re
    from pathlib import Path

    from sdrt.cli.serve import serve
    from sdrt.serve.schemas import ServeSettings

    text = (Path(__file__).parents[2] / "docs" / "serve.md").read_text()
    table = text.split("| quality | steps |", 1)[1].split("\n\n", 1)[0]
    documented = {}
    for names, steps in re.findall(r"^\s*\| (.+?) \| (\d+) \|$", table, flags=re.MULTILINE):
        for name in re.findall(r"`(\w+)`", names):
            documented[name] = int(steps)
    assert documented == QUALITY_STEPS
    defaults = {option.name: option.default for option in serve.params}
    assert defaults["url_ttl"] == ServeSettings.image_url_ttl_s
    assert defaults["url_images"] == ServeSettings.max_url_images
    flat = " ".join(text.split())
    assert f"`--url-ttl` seconds (default {ServeSettings.image_url_ttl_s:g}," in flat
    assert f"`--url-images` at once (default {ServeSettings.max_url_images};" in flat
