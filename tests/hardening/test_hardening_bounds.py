"""Bounded time and memory (issue 21, class 3): tokenizing any accepted prompt is fast and
equals the reference, the word cache cannot grow without bound, prompts have a length limit,
and input images are refused from their header when too large (CLI and server)."""

from __future__ import annotations

import random
import time

import pytest
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.errors import GenerationError
from sdrt.runtime.imaging.inputs import MAX_INPUT_PIXELS, InputImageError, open_image
from sdrt.runtime.text.checks import MAX_PROMPT_CHARS
from sdrt.runtime.text.tokenizer import MAX_CACHED_WORD_CHARS, WORD_CACHE_SIZE, ClipTokenizer
from support.hostile import assert_one_line_error, gif_header, png_header

# The quadratic merge took 21 s on 40,000 letters; the heap merge takes about 0.3 s. The bound
# is far from both, so machine speed cannot decide the test, only the algorithm's order.
WORST_CASE_SECONDS = 5.0


def _worst_prompts(rng: random.Random) -> dict[str, str]:
    size = MAX_PROMPT_CHARS
    return {
        "one letter": "a" * size,
        "random letters": "".join(rng.choice("abcdefghij") for _ in range(size)),
        "two letters": "ab" * (size // 2),
        "accents": "é" * size,
        "cjk": "日本" * (size // 2),
        "punctuation": "!?" * (size // 2),
        "digits": "7" * size,
        "mixed words": " ".join(["x" * 500] * 60),
    }


@pytest.fixture(scope="module")
def tokenizer(sd15_dir) -> ClipTokenizer:
    return ClipTokenizer.from_folder(sd15_dir)


def test_worst_case_prompts_tokenize_in_bounded_time(tokenizer):
    for label, prompt in _worst_prompts(random.Random(0)).items():
        started = time.perf_counter()
        tokenizer.encode(prompt)
        assert time.perf_counter() - started < WORST_CASE_SECONDS, label


@pytest.mark.parametrize("seed", range(6))
def test_long_words_tokenize_as_the_reference_does(sd15_dir, tokenizer, seed):
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(sd15_dir / "tokenizer")
    rng = random.Random(seed)
    alphabet = rng.choice(["ab", "abcdefghijklmnopqrstuvwxyz", "aeiou", "éèa", "xyz0"])
    word = "".join(rng.choice(alphabet) for _ in range(rng.randint(500, 3000)))
    assert tokenizer.tokenize(word) == reference(word, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_the_word_cache_is_bounded_in_entries_and_size(sd15_dir):
    tokenizer = ClipTokenizer.from_folder(sd15_dir)
    rng = random.Random(1)
    for _ in range(300):
        tokenizer.tokenize(
            " ".join("".join(rng.choice("abcdefgh") for _ in range(rng.choice((8, 200)))) for _ in range(50))
        )
    assert len(tokenizer._cache) <= WORD_CACHE_SIZE
    assert max(len(word) for word in tokenizer._cache) <= MAX_CACHED_WORD_CHARS


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompts_over_the_limit_are_refused(exported_tiny, field):
    from sdrt.runtime.pipeline import Pipeline

    pipeline = Pipeline.load(exported_tiny("standard"))
    settings = {"prompt": "a cat", field: "a" * (MAX_PROMPT_CHARS + 1)}
    with pytest.raises(GenerationError, match=f"{field} has {MAX_PROMPT_CHARS + 1} characters") as caught:
        pipeline.generate(settings.pop("prompt"), steps=1, **settings)
    assert caught.value.param == field


def _bombs():
    """(label, bytes) of images over the pixel limit whose files are tiny."""
    for width, height in ((12000, 12000), (40_000, 1001), (65535, 65535), (1, MAX_INPUT_PIXELS + 1)):
        yield f"png {width}x{height}", png_header(width, height)
        if width <= 65535 and height <= 65535:
            yield f"gif {width}x{height}", gif_header(width, height)


@pytest.mark.parametrize("label, data", list(_bombs()))
def test_image_bombs_are_refused_from_the_header(tmp_path, label, data):
    started = time.perf_counter()
    with pytest.raises(InputImageError, match="megapixels"):
        open_image(data)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(InputImageError, match="megapixels"):
        open_image(path)
    assert time.perf_counter() - started < WORST_CASE_SECONDS  # nothing was decoded


@pytest.mark.parametrize("option", ["--init-image", "--mask"])
def test_cli_image_bombs_are_one_line(exported_tiny, tmp_path, option):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20000, 20000))
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(photo)
    arguments = [
        "generate",
        "x",
        "--model",
        str(exported_tiny("standard")),
        "--steps",
        "1",
        "--out",
        str(tmp_path / "o.png"),
        "--init-image",
        str(bomb if option == "--init-image" else photo),
    ]
    if option == "--mask":
        arguments += ["--mask", str(bomb)]
    assert_one_line_error(CliRunner().invoke(main, arguments), "megapixels")


@pytest.mark.parametrize("value", ["0", "-1", "100000", "x", "1.5", "nan"])
def test_threads_must_fit_the_machine(exported_tiny, value):
    result = CliRunner().invoke(main, ["generate", "x", "--model", str(exported_tiny("standard")), "--threads", value])
    assert_one_line_error(result, "--threads")
