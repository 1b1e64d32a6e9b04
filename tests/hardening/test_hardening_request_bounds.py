"""A client's bad input is a 4xx naming its field, never a 500 (issue 38): JSON nested past any
sane depth, numbers past any field's range (every numeric field of both APIs, swept), the OpenAI
edits form's fields and files, OpenAI sizes, and hires step counts past --max-steps."""

from __future__ import annotations

import io
import typing

import httpx
import pytest
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.a1111_schemas import A1111Img2ImgRequest, A1111Txt2ImgRequest
from sdrt.serve.app import ServeSettings, create_app
from sdrt.serve.schemas import OpenAIImageRequest
from support.serving import live_server

MAX_STEPS = 8
DEEP = 900  # past the server's nesting bound, under json's own recursion limit
HUGE_NUMBERS = ("-1" + "0" * 400, "1e300")  # an int past any float, a float past any field


@pytest.fixture(scope="module")
def url(exported_tiny):
    settings = ServeSettings(max_steps=MAX_STEPS)
    with live_server(create_app(Pipeline.load(exported_tiny("standard")), settings)) as base:
        yield base


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format="PNG")
    return buffer.getvalue()


def refusal(response: httpx.Response) -> str | None:
    """The refused field's name (the answer must be a 4xx JSON error)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return response.json()["error"]["param"]


def deep(levels: int):
    value: object = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("route", "field", "wrap"),
    [
        ("/sdapi/v1/txt2img", "override_settings", lambda v: {"x": v}),
        ("/sdapi/v1/txt2img", "comments", lambda v: {"x": v}),
        ("/sdapi/v1/txt2img", "script_args", lambda v: [v]),
        ("/sdapi/v1/txt2img", "alwayson_scripts", lambda v: {"controlnet": {"args": [{"image": {"x": v}}]}}),
        ("/sdapi/v1/txt2img", "hr_additional_modules", lambda v: [v]),
    ],
)
def test_deep_json_is_a_400_naming_its_field(url, route, field, wrap):
    response = httpx.post(f"{url}{route}", json={"prompt": "a", "steps": 1, field: wrap(deep(DEEP))}, timeout=60)
    assert refusal(response) == field


@pytest.mark.parametrize("route", ["/sdapi/v1/options", "/sdapi/v1/extra-single-image", "/controlnet/detect"])
def test_deep_json_on_the_raw_routes_is_a_4xx(url, route):
    assert httpx.post(f"{url}{route}", json={"x": deep(DEEP), "image": deep(DEEP)}, timeout=60).status_code < 500


def numeric_fields(model) -> list[str]:
    """The fields whose type holds an int or a float (the sweep's subjects)."""
    names = []
    for name, info in model.model_fields.items():
        types = typing.get_args(info.annotation) or (info.annotation,)
        if any(kind in (int, float) for kind in types):
            names.append(name)
    return names


def post_raw(url: str, route: str, text: str) -> httpx.Response:
    return httpx.post(f"{url}{route}", content=text, headers={"content-type": "application/json"}, timeout=60)


@pytest.mark.parametrize(
    ("route", "model", "base"),
    [
        ("/sdapi/v1/txt2img", A1111Txt2ImgRequest, '"prompt": "a", "steps": 1, "enable_hr": true'),
        ("/sdapi/v1/img2img", A1111Img2ImgRequest, '"prompt": "a", "steps": 1, "init_images": ["x"]'),
        ("/v1/images/generations", OpenAIImageRequest, '"prompt": "a", "steps": 1'),
    ],
)
def test_every_numeric_field_refuses_numbers_past_its_range(url, route, model, base):
    fields = numeric_fields(model)
    assert "cfg_scale" in fields or "guidance_scale" in fields
    for field in fields:
        for number in HUGE_NUMBERS:
            response = post_raw(url, route, f'{{{base}, "{field}": {number}}}')
            assert refusal(response) == field, (field, number)


@pytest.mark.parametrize(("field", "value"), [("hr_resize_x", -1), ("hr_resize_y", -5), ("hr_resize_x", 10**6)])
def test_hires_sizes_out_of_range_are_400(url, field, value):
    body = {"prompt": "a", "steps": 1, "enable_hr": True, field: value}
    assert refusal(httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=60)) == field


def test_hires_steps_count_against_max_steps(url):
    a1111 = {"prompt": "a", "steps": 1, "enable_hr": True, "hr_second_pass_steps": MAX_STEPS + 1}
    assert refusal(httpx.post(f"{url}/sdapi/v1/txt2img", json=a1111, timeout=60)) == "hr_second_pass_steps"
    openai = {"prompt": "a", "steps": 1, "hires": {"steps": MAX_STEPS + 1}}
    assert refusal(httpx.post(f"{url}/v1/images/generations", json=openai, timeout=60)) == "hires.steps"


@pytest.mark.parametrize("size", ["9999999999999999", "9" * 5000 + "x64", "64x99999", "0x64"])
def test_openai_sizes_out_of_range_are_400(url, size):
    body = {"prompt": "a", "steps": 1, "size": size}
    assert refusal(httpx.post(f"{url}/v1/images/generations", json=body, timeout=60)) == "size"


@pytest.mark.parametrize(
    ("field", "value"),
    [("guidance_scale", "nan"), ("strength", "inf"), ("n", "0"), ("seed", "-1"), ("steps", "0"), ("n", "1e400")],
)
def test_edits_form_fields_out_of_range_are_400(url, field, value):
    files = {"image": ("a.png", png_bytes(64, 64), "image/png")}
    response = httpx.post(f"{url}/v1/images/edits", files=files, data={"prompt": "a", field: value}, timeout=60)
    assert refusal(response) == field


@pytest.mark.parametrize("param", ["image", "mask"])
def test_edits_files_that_are_not_images_name_their_field(url, param):
    files = {"image": ("a.png", png_bytes(64, 64), "image/png"), param: ("x.png", b"not an image")}
    response = httpx.post(f"{url}/v1/images/edits", files=files, data={"prompt": "a", "steps": "1"}, timeout=60)
    assert refusal(response) == param
    assert "BytesIO" not in response.text and "0x" not in response.json()["error"]["message"]
