"""A1111's prompt language, parsed: emphasis weights, BREAK, schedules and 75-token chunks.

No library implements it, so the expected values here follow the written rules (the webui's
`prompt_parser.py` doctests, and the rules stated in docs/prompts.md), worked out by hand."""

from __future__ import annotations

import pytest

from sdrt.errors import GenerationError
from sdrt.runtime.text.prompts.chunks import COMMA_BACKTRACK, chunk_fragments
from sdrt.runtime.text.prompts.emphasis import BREAK, parse_emphasis
from sdrt.runtime.text.prompts.schedule import prompt_schedule
from sdrt.runtime.text.tokenizer import ClipTokenizer

R, S = 1.1, 1 / 1.1  # ( ) and [ ]

EMPHASIS_CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", R)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.3 * R * R),
            (" ", R),
            ("on", 1.0),
            (" a ", R),
            ("hill", 0.55),
            (", sun, ", R),
            ("sky", R**4),
            (".", R),
        ],
    ),
    ("((house:1.3))", [("house", 1.3 * R)]),
    ("[a]", [("a", S)]),
    ("[[a]]", [("a", S * S)]),
    ("([a])", [("a", R * S)]),
    ("(a:1.5)", [("a", 1.5)]),
    ("(a: 1.5 )", [("a", 1.5)]),
    ("(a:+1.5)", [("a", 1.5)]),
    ("(a:-0.5)", [("a", -0.5)]),
    ("(a:.5)", [("a", 0.5)]),
    ("(a:5.)", [("a", 5.0)]),
    ("(a:0)", [("a", 0.0)]),
    ("(a:1)", [("a", 1.0)]),
    ("x (a:1.2) (b:0.8) y", [("x ", 1.0), ("a", 1.2), (" ", 1.0), ("b", 0.8), (" y", 1.0)]),
    ("(a (b:2) c)", [("a ", R), ("b", 2 * R), (" c", R)]),
    ("(a:abc)", [("a:abc", R)]),  # not a number: the colon is text
    ("a:b", [("a:b", 1.0)]),
    ("a)", [("a)", 1.0)]),  # a bracket that closes nothing is text
    ("a]", [("a]", 1.0)]),
    ("(a]", [("a]", R)]),  # the ] closes no [ and is text; the ( is never closed
    ("[a)", [("a)", S)]),
    (":1.2)", [(":1.2)", 1.0)]),  # a weight with no ( open is text
    ("[a:1.2)", [("a:1.2)", S)]),
    (r"\\", [("\\", 1.0)]),
    (r"a\b", [("ab", 1.0)]),  # a backslash before an ordinary character is dropped
    (r"\(a\)", [("(a)", 1.0)]),
    (r"(\(a\))", [("(a)", R)]),
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("(", [("", 1.0)]),
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),  # BREAK is a word of its own
    ("a break b", [("a break b", 1.0)]),  # upper case only
    ("a BREAK BREAK b", [("a", 1.0), BREAK, ("", 1.0), BREAK, ("b", 1.0)]),
    ("BREAK", [("", 1.0), BREAK, ("", 1.0)]),
    ("(a BREAK b)", [("a", R), BREAK, ("b", R)]),  # sdrt: still a BREAK inside brackets
    ("un chat (très:1.2) joli", [("un chat ", 1.0), ("très", 1.2), (" joli", 1.0)]),
    ("猫 (犬) 🐱", [("猫 ", 1.0), ("犬", R), (" 🐱", 1.0)]),
    ("a\n(b)", [("a\n", 1.0), ("b", R)]),
]


@pytest.mark.parametrize("prompt, expected", EMPHASIS_CASES, ids=[repr(c[0]) for c in EMPHASIS_CASES])
def test_emphasis_weights(prompt, expected):
    got = parse_emphasis(prompt)
    assert len(got) == len(expected), got
    for fragment, want in zip(got, expected):
        if want is BREAK:
            assert fragment is BREAK
        else:
            assert fragment[0] == want[0] and fragment[1] == pytest.approx(want[1], rel=1e-12), got


@pytest.mark.parametrize("weight", ["1.2.3", ".", "1..2", "-."])
def test_a_malformed_weight_is_a_clear_error(weight):
    with pytest.raises(GenerationError, match=f"malformed emphasis weight '{weight}'"):
        parse_emphasis(f"a (cat:{weight}) here")


ALTERNATE = [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]
SCHEDULE_CASES = [  # (prompt, schedule for 10 steps)
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", ALTERNATE),
    ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
    ("[a:b:1.5]", [(10, "a")]),  # a decimal is a fraction of the steps: 15 of 10 is capped at 10
    ("[a:b:0]", [(10, "b")]),
    ("[a:b:25]", [(10, "a")]),
    ("[a::4] x", [(4, "a x"), (10, " x")]),
    ("[a:b:0.25]", [(2, "a"), (10, "b")]),  # 2.5 steps: the int part
    ("a | b", [(10, "a | b")]),  # | outside a group: the prompt is one text
    ("[a:b:c]", [(10, "[a:b:c]")]),  # not a number: no edit
    ("[a|b:3]", [(10, "[a|b:3]")]),  # mixed separators: no group
    ("(a:[b:c:5])", [(5, "(a:b)"), (10, "(a:c)")]),
    ("[" * 100 + "x", [(10, "[" * 100 + "x")]),  # too deep: one text
    (r"\[a:b:3\]", [(10, r"\[a:b:3\]")]),
]


@pytest.mark.parametrize("prompt, expected", SCHEDULE_CASES, ids=[repr(c[0][:30]) for c in SCHEDULE_CASES])
def test_schedules(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


@pytest.fixture(scope="module")
def tokenizer(sd15_dir) -> ClipTokenizer:
    return ClipTokenizer.from_folder(sd15_dir / "tokenizer")


def _content(tokenizer, chunks, row) -> list[int]:
    ids = chunks.ids[row].tolist()
    return ids[1 : ids.index(tokenizer.eos_id)]


def test_a_full_chunk_moves_the_words_after_its_last_comma(tokenizer):
    cat, dog, comma = (tokenizer.tokenize(w)[0] for w in ("cat", "dog", ","))
    # 70 cats, a comma, 10 dogs: the 76th token does not fit, the comma is 5 back: the dogs move.
    chunks = chunk_fragments([("cat " * 70 + ", " + "dog " * 10, 1.0)], tokenizer)
    assert chunks.count == 2 and chunks.token_count == 81
    assert _content(tokenizer, chunks, 0) == [cat] * 70 + [comma]
    assert _content(tokenizer, chunks, 1) == [dog] * 10
    # A comma further back than the limit: the chunk is cut at 75 tokens.
    far = 75 - COMMA_BACKTRACK - 2
    chunks = chunk_fragments([("cat " * far + ", " + "dog " * 30, 1.0)], tokenizer)
    assert _content(tokenizer, chunks, 0) == [cat] * far + [comma] + [dog] * (75 - far - 1)


def test_break_weights_padding_and_an_sd2_pad_token(tokenizer):
    chunks = chunk_fragments(parse_emphasis("a (red:1.5) cat BREAK [dog]"), tokenizer)
    red, cat, dog = (tokenizer.tokenize(w)[0] for w in ("red", "cat", "dog"))
    assert chunks.ids.shape == (2, 77) and chunks.ids[0, :5].tolist() == [
        tokenizer.bos_id,
        320,
        red,
        cat,
        tokenizer.eos_id,
    ]
    assert (chunks.ids[0, 4:] == tokenizer.eos_id).all()  # SD 1.x pads with its end token
    assert chunks.weights[0, :5].tolist() == pytest.approx([1, 1, 1.5, 1, 1])
    assert chunks.weights[1, :3].tolist() == pytest.approx([1, 1 / 1.1, 1]) and chunks.ids[1, 1] == dog
    sd2 = ClipTokenizer(
        tokenizer.vocab,
        list(tokenizer.merge_ranks),
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="!",
        unk_token="<|endoftext|>",
        max_length=77,
    )
    ids = chunk_fragments([("a cat", 1.0)], sd2).ids[0].tolist()
    assert ids[:4] == [sd2.bos_id, 320, cat, sd2.eos_id] and set(ids[4:]) == {sd2.pad_id}
    assert chunk_fragments([("", 1.0)], tokenizer).count == 1  # an empty prompt is one empty chunk
