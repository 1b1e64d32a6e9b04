"""Bounded prompt work (issue 38): styles bounded as they expand, the emphasis parser linear
(and equal to an independent reading of A1111's rules), the schedule parser bounded, sizes
refused before int() reads a digit string, and weights that can never give an image refused
up front, naming their field."""

from __future__ import annotations

import random
import time

import pytest

from sdrt.errors import GenerationError
from sdrt.runtime.features.lora.tags import MAX_LORA_WEIGHT, LoraRef, extract_tags
from sdrt.runtime.sizes import MAX_SIZE_DIGITS, SizeError, parse_size
from sdrt.runtime.text.checks import MAX_PROMPT_CHARS
from sdrt.runtime.text.prompts import emphasis, styles
from sdrt.runtime.text.prompts.emphasis import (
    BREAK,
    MAX_EMPHASIS_DEPTH,
    MAX_EMPHASIS_WEIGHT,
    ROUND_FACTOR,
    SQUARE_FACTOR,
    parse_emphasis,
)
from sdrt.runtime.text.prompts.schedule import prompt_schedule
from sdrt.runtime.text.prompts.styles import MAX_STYLE_NAMES, MAX_STYLED_CHARS, Style, apply_styles

# Generous: the bounded parsers take milliseconds here; the quadratic ones took seconds.
BOUNDED_SECONDS = 2.0


# ---------------------------------------------------------------- styles


def _reference_styles(prompt: str, names: list[str], table: dict[str, Style]) -> str:
    """A1111's rule, written out: "{prompt}" takes the prompt so far, else ", " and the style."""
    for name in names:
        text = table[name].prompt
        if "{prompt}" in text:
            prompt = text.replace("{prompt}", prompt)
        else:
            prompt = ", ".join(p for p in (prompt.strip(), text.strip()) if p)
    return prompt


def test_valid_styles_apply_as_a1111_does():
    table = {
        "wrap": Style("wrap", "best, {prompt}, {prompt} end", "bad, {prompt}"),
        "add": Style("add", "  film grain ", "blurry"),
        "empty": Style("empty", "", ""),
    }
    rng = random.Random(3)
    for _ in range(200):
        names = [rng.choice(list(table)) for _ in range(rng.randrange(6))]
        prompt = rng.choice(["a cat", "", "  dog  ", "{prompt}"])
        got, _ = apply_styles(prompt, "ugly", names, table)
        assert got == _reference_styles(prompt, names, table)


def test_a_doubling_style_is_refused_before_it_builds_a_long_text(monkeypatch):
    table = {"double": Style("double", "{prompt} {prompt}")}
    built: list[int] = []
    real_merge = styles.merge
    monkeypatch.setattr(
        styles, "merge", lambda text, prompt: built.append(len(real := real_merge(text, prompt))) or real
    )
    started = time.monotonic()
    for count in (22, 40, MAX_STYLE_NAMES):
        with pytest.raises(GenerationError, match="styles: applying style 'double' would make the prompt") as raised:
            apply_styles("x" * 1000, "", ["double"] * count, table)
        assert raised.value.param == "styles"
    assert time.monotonic() - started < BOUNDED_SECONDS
    assert built and max(built) <= MAX_STYLED_CHARS


def test_a_style_named_too_often_is_refused_at_once():
    table = {"add": Style("add", "a")}
    started = time.monotonic()
    with pytest.raises(GenerationError, match=f"names 60000 styles; the limit is {MAX_STYLE_NAMES}") as raised:
        apply_styles("p", "", ["add"] * 60_000, table, "style")
    assert raised.value.param == "style" and time.monotonic() - started < BOUNDED_SECONDS
    # the most names accepted is fast too: each step is bounded by the length limit
    prompt, _ = apply_styles("p", "", ["add"] * MAX_STYLE_NAMES, table)
    assert prompt == "p" + ", a" * MAX_STYLE_NAMES


def test_a_negative_style_over_the_limit_names_the_styles_field():
    table = {"neg": Style("neg", "", "{prompt}" * 3)}
    with pytest.raises(GenerationError, match="would make the negative prompt") as raised:
        apply_styles("p", "n" * (MAX_STYLED_CHARS // 2), ["neg"], table)
    assert raised.value.param == "styles"


# ---------------------------------------------------------------- emphasis


def _reference_emphasis(text: str) -> list:
    """An independent reading of A1111's parse_prompt_attention (with sdrt's BREAK inside
    brackets): scan the text into pieces and brackets, match the brackets, and give each text
    piece the product of the brackets around it, multiplied in the order they close (the
    unclosed `(` then the unclosed `[`, each in the order opened, as A1111 does at the end)."""
    pieces: list[list] = []  # [text, [bracket ids]] or None for BREAK
    factor: dict[int, float] = {}
    order: dict[int, int] = {}
    stacks = {"(": [], "[": []}
    i = 0

    def add(piece: str) -> None:
        pieces.append([piece, [b for s in stacks.values() for b in s]])

    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt and nxt in "()[]\\":
                add(nxt)
                i += 2
            else:
                i += 1
            continue
        if c in "([":
            bracket = len(factor)
            factor[bracket] = ROUND_FACTOR if c == "(" else SQUARE_FACTOR
            stacks[c].append(bracket)
            i += 1
            continue
        if c == ":":
            j = i + 1
            while j < len(text) and text[j].isspace():
                j += 1
            k = j + (j < len(text) and text[j] in "+-")
            m = k
            while m < len(text) and (text[m] == "." or text[m].isdigit()):
                m += 1
            n = m
            while n < len(text) and text[n].isspace():
                n += 1
            if m > k and n < len(text) and text[n] == ")":
                if stacks["("]:
                    bracket = stacks["("].pop()
                    factor[bracket] = float(text[j:m])
                    order[bracket] = len(order)
                else:
                    add(text[i : n + 1])
                i = n + 1
                continue
            add(":")
            i += 1
            continue
        if c in ")]":
            opening = "(" if c == ")" else "["
            if stacks[opening]:
                order[stacks[opening].pop()] = len(order)
            else:
                add(c)
            i += 1
            continue
        j = i
        while j < len(text) and text[j] not in "\\()[]:":
            j += 1
        run = text[i:j]
        parts, start, at = [], 0, run.find("BREAK")
        while at >= 0:  # BREAK as a word of its own: no letter, digit or _ either side
            before, after = run[at - 1 : at], run[at + len("BREAK") : at + len("BREAK") + 1]
            if not any(c.isalnum() or c == "_" for c in before + after):
                parts.append(run[start:at])
                start = at + len("BREAK")
            at = run.find("BREAK", max(at + 1, start))
        parts.append(run[start:])
        for index, part in enumerate(parts):
            if index:
                pieces.append(None)
                part = part.lstrip()
            if index < len(parts) - 1:
                part = part.rstrip()
            add(part)
        i = j
    for opening in "([":
        for bracket in stacks[opening]:
            order[bracket] = len(order)
    result: list = []
    for piece in pieces or [["", []]]:
        if piece is None:
            result.append(BREAK)
            continue
        weight = 1.0
        for bracket in sorted(piece[1], key=order.__getitem__):
            weight *= factor[bracket]
        if result and result[-1] is not BREAK and result[-1][1] == weight:
            result[-1] = (result[-1][0] + piece[0], weight)
        else:
            result.append((piece[0], weight))
    return result


ATOMS = [
    "a",
    "b c",
    " ",
    "(",
    ")",
    "[",
    "]",
    ":1.5)",
    ": 0.5 )",
    ":-2)",
    ":x",
    "\\(",
    "\\]",
    "\\\\",
    "\\q",
    " BREAK ",
    ",",
]


@pytest.mark.parametrize("seed", range(4))
def test_emphasis_equals_an_independent_reading_of_a1111s_rules(seed):
    rng = random.Random(seed)
    for _ in range(400):
        prompt = "".join(rng.choice(ATOMS) for _ in range(rng.randrange(40)))
        expected = _reference_emphasis(prompt)
        if any(f is not BREAK and abs(f[1]) > MAX_EMPHASIS_WEIGHT for f in expected):
            with pytest.raises(GenerationError, match="emphasis weights multiply to"):
                parse_emphasis(prompt)
        else:
            assert parse_emphasis(prompt) == expected, prompt  # exact: weights to the last bit


def test_the_reference_reads_the_documented_cases():
    """The reference itself is checked against hand-worked cases (so it cannot agree by accident)."""
    assert _reference_emphasis("a (b:1.5) [c]") == [("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", SQUARE_FACTOR)]
    assert _reference_emphasis("((a)") == [("a", ROUND_FACTOR * ROUND_FACTOR)]
    assert _reference_emphasis("x BREAK y") == [("x", 1.0), BREAK, ("y", 1.0)]


def _work(prompt: str) -> tuple[int, int]:
    parse = emphasis._Emphasis(prompt, "prompt")
    parse.parse()
    return parse.work, len(parse.fragments)


@pytest.mark.parametrize(
    "prompt",
    [
        "(a" * (MAX_EMPHASIS_DEPTH - 1) + "a" * (MAX_PROMPT_CHARS - 2 * MAX_EMPHASIS_DEPTH),
        ("(a" * (MAX_EMPHASIS_DEPTH - 1) + ")" * (MAX_EMPHASIS_DEPTH - 1)) * (MAX_PROMPT_CHARS // 190),
        ("([a" * 21 + "])" * 21) * (MAX_PROMPT_CHARS // 170),
        "\\(" * (MAX_PROMPT_CHARS // 2),
        "a:" * (MAX_PROMPT_CHARS // 2),
    ],
    ids=["deep, unclosed", "deep, closed", "mixed", "escapes", "colons"],
)
def test_emphasis_work_is_linear_in_the_prompt(prompt):
    """Each fragment is multiplied at most once per bracket around it: fragments x the depth bound."""
    work, fragments = _work(prompt)
    assert work <= MAX_EMPHASIS_DEPTH * fragments
    started = time.monotonic()
    parse_emphasis(prompt)
    assert time.monotonic() - started < BOUNDED_SECONDS


@pytest.mark.parametrize("opening", ["(", "[", "(["])
def test_emphasis_nested_past_the_bound_is_one_clear_error(opening):
    started = time.monotonic()
    with pytest.raises(GenerationError, match=f"more than {MAX_EMPHASIS_DEPTH} deep") as raised:
        parse_emphasis((opening + "a") * 10_900, "negative_prompt")
    assert raised.value.param == "negative_prompt" and time.monotonic() - started < BOUNDED_SECONDS
    assert parse_emphasis("(" * MAX_EMPHASIS_DEPTH + "a")[0][1] == pytest.approx(ROUND_FACTOR**MAX_EMPHASIS_DEPTH)


@pytest.mark.parametrize(
    "prompt",
    ["(a:1001)", "(a:-2000)", "((a:1000))", "((((a:31.7)):31.7))", "(a:" + "9" * 400 + ")"],
)
def test_emphasis_weights_past_the_bound_name_the_field(prompt):
    with pytest.raises(GenerationError, match=f"within \\+-{MAX_EMPHASIS_WEIGHT:g}") as raised:
        parse_emphasis("ok " + prompt, "negative_prompt")
    assert raised.value.param == "negative_prompt"
    assert parse_emphasis("(a:1000)") == [("a", 1000.0)]


@pytest.mark.parametrize(
    "prompt",
    [
        "[a" * 10_900,
        "[" * MAX_PROMPT_CHARS,
        "[a:" * (MAX_PROMPT_CHARS // 3),
        "[a|" * (MAX_PROMPT_CHARS // 3),
        "[a:b:1]" * (MAX_PROMPT_CHARS // 7),
        "(a[" * (MAX_PROMPT_CHARS // 3),
        "[a]" * (MAX_PROMPT_CHARS // 3) + "|",
    ],
)
def test_schedule_parsing_is_bounded(prompt):
    started = time.monotonic()
    schedule = prompt_schedule(prompt, 20)
    assert schedule[-1][0] == 20 and time.monotonic() - started < BOUNDED_SECONDS


@pytest.mark.parametrize("when", ["1e999", "9" * 5000, "-1e999", "1e308"])
def test_an_edit_step_beyond_float_range_is_read_as_capped(when):
    after = "b" if when.startswith("-") else "a"
    assert prompt_schedule(f"[a:b:{when}]", 20) == [(20, after)]


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize("text", ["9" * 5000 + "x64", "64x" + "9" * 5000, "9" * 5000, "9999999999999999", "1" * 10])
def test_a_size_with_too_many_digits_is_refused_before_int(text):
    with pytest.raises(SizeError) as raised:
        parse_size(text, "size")
    assert raised.value.param == "size" and len(str(raised.value)) < 200


def test_sizes_within_the_digit_bound_read_as_before():
    assert parse_size("9" * MAX_SIZE_DIGITS + "x64", "size") == (64, int("9" * MAX_SIZE_DIGITS))
    assert parse_size(" 512 X 768 ", "size") == (768, 512)


def test_openai_size_of_many_digits_is_a_400():
    from sdrt.serve.openai_routes import parse_openai_size
    from sdrt.serve.schemas import RequestError

    for size in ("9999999999999999", "9" * 5000 + "x64"):
        with pytest.raises(RequestError) as raised:
            parse_openai_size(size)
        assert raised.value.status == 400 and raised.value.param == "size"


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("weight", ["1e30", "-1e30", "101", "1e308"])
def test_a_lora_tag_weight_past_the_bound_is_refused(weight):
    with pytest.raises(GenerationError, match=f"outside \\+-{MAX_LORA_WEIGHT:g}"):
        extract_tags(f"a cat <lora:style:{weight}>")
    with pytest.raises(GenerationError, match=f"outside \\+-{MAX_LORA_WEIGHT:g}"):
        LoraRef.parse(f"style.safetensors:{weight}")
    assert extract_tags("a <lora:style:-100>")[1][0].weights.text == -MAX_LORA_WEIGHT
