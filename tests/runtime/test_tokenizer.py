"""sdrt's CLIP tokenizer against transformers.CLIPTokenizer (the reference diffusers uses)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPTokenizer

from sdrt.errors import ModelFolderError
from sdrt.runtime.text.tokenizer import ClipTokenizer, normalize, to_byte_level

DATA_DIR = Path(__file__).parent.parent / "data"

OWN_PROMPTS = [
    "A majestic lion jumping from a big stone at night",
    "photograph of an astronaut riding a horse, 35mm, f/1.8, bokeh",
    "a watercolor painting of a fox in a snowy forest, trending on artstation",
    "((best quality)), ((masterpiece)), (detailed:1.3), [sketch], {soft light}",
    "<lora:add_detail:0.8> a knight in shining armour",
    "isometric 3D render of a tiny cozy room, blender, octane, 4k",
    "ürün fotoğrafı, beyaz arka plan",
    "Straße in München bei Nacht, Regen, Spiegelungen",
    "Ça va? Très bien! À bientôt, garçon.",
    "niño pequeño jugando fútbol en la playa, atardecer",
    "Zażółć gęślą jaźń",
    "Příliš žluťoučký kůň úpěl ďábelské ódy",
    "Фотография кота в шляпе, высокое качество",
    "УКРАЇНСЬКА ЇЖАК ҐАНОК",
    "ΣΊΣΥΦΟΣ ΚΑΙ ΟΔΥΣΣΕΥΣ",
    "Οδυσσεύς σοφός",
    "עיר עתיקה בשקיעה",
    "مدينة قديمة عند الغروب، بجودة عالية",
    "शहर का रात्रि दृश्य, उच्च गुणवत्ता",
    "রাতের শহর",
    "ภาพถ่ายแมวน่ารัก",
    "ảnh chụp một con mèo dễ thương trên mái nhà",
    "富士山と桜、浮世絵スタイル",
    "カタカナ ﾊﾝｶｸ ｶﾀｶﾅ",
    "고양이 사진, 고화질",
    "一只穿着宇航服的柴犬，超高清，8K",
    "繁體中文：夜晚的台北101",
    "ქართული ანბანი",
    "Հայերեն այբուբեն",
    "ᚠᚢᚦᚨᚱᚲ runes and ogham ᚛ᚁᚂᚃ᚜",
    "𝕳𝖊𝖑𝖑𝖔 𝓌𝑜𝓇𝓁𝒹 𝟙𝟚𝟛",
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ １２３",
    "ﬁne ﬂowers ﬀ ﬃ ligatures",
    "e\u0301 combining acute vs é precomposed",
    "A\u030a ring and Å angstrom and Å",
    "ǅungla ǈudi ǋ titlecase digraphs",
    "İzmir ve Iğdır, ıı İİ",
    "ẞtraße capital sharp s",
    "Ⅻ roman numerals ⅻ Ⅳ and ½ ¾ ² ³ fractions",
    "٣٤٥ arabic-indic digits and ۱۲۳ persian digits",
    "१२३ devanagari digits",
    "🐱‍👤 ninja cat, 👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag",
    "👍🏽 skin tone and ❤️ with variation selector",
    "🇯🇵🇫🇷🇺🇸 flags",
    "a cat 😺😸😹😻😼😽🙀😿😾",
    "math ∑ ∫ √ ∞ ≈ ≠ ≤ ≥ ∀ ∃ ∈ ⊂",
    "arrows → ← ↑ ↓ ⇒ ⇔ and box ┌─┐│└┘",
    "currency $ € £ ¥ ₹ ₿ ¢ and % ‰",
    "quotes “curly” ‘single’ «guillemets» „low“",
    "dashes - – — ― and hyphen‐minus",
    "ellipsis… and middle dot · and bullet •",
    "&amp;&lt;&gt;&quot;&#39;&#x27;&nbsp;&copy;",
    '<b>html</b> <i>tags</i> <br/> <div class="x">',
    "path/to/file.png and C:\\Windows\\System32",
    "https://example.com/a?b=c&d=e#frag",
    "email me at someone@example.org",
    "#hashtag @mention $cashtag",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "x2 3x 4K 1080p 60fps 1.5x 2.0 v1.5 sd-2.1",
    "3.141592653589793238462643383279",
    "0000000000 1111111111 9999999999",
    "-1 +1 1e10 1E-5 0x1F 0b1010",
    "12:30 2024-01-01 01/02/03",
    "I'm you're he's she'd we'll they've it's can't won't",
    "I'M YOU'RE HE'S SHE'D WE'LL THEY'VE",
    "'s 't 're 've 'm 'll 'd standalone contractions",
    "''quoted'' 'single' ''s '''",
    "rock'n'roll o'clock y'all ma'am",
    "it’s curly apostrophe don’t",
    "a\tb\nc\rd\x0be\x0cf",
    "a\u00a0b\u2002c\u2003d\u2009e\u202ff\u3000g",
    "line\u2028separator and paragraph\u2029separator",
    "next\u0085line",
    "control \x01\x02\x03\x1c\x1d\x1e\x1f chars",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "soft\u00adhyphen",
    "right\u200fto\u200eleft marks",
    "variation\ufe0fselector\ufe0e",
    "\ufffd replacement char",
    "private use \ue000\uf8ff",
    "astral \U0001f600 \U00020000 \U0002a6d6",
    "<|startoftext|>explicit start",
    "explicit end<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    "<|ENDOFTEXT|> uppercase special",
    "<|startoftext|><|endoftext|>",
    "<|endof text|> broken special",
    "!!!!!!!!!!",
    "??? ... !!! ,,, ;;; ::: ---",
    "a!b!c!d",
    "!hello!",
    "(((((((((((((((((((((",
    "[[[[[[]]]]]] {{{{}}}}",
    "~~~~ ^^^^ ```` ''''",
    "____ **** #### @@@@ $$$$",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "antidisestablishmentarianism floccinaucinihilipilification",
    "the the the the the the the the the the",
    "A",
    "Z",
    "9",
    ".",
    " ",
    "\n",
    "\t\t\t",
    "   ",
    "",
    "a b",
    "  a  b  ",
    "MiXeD CaSe PrOmPt WiTh NuMbErS 123 AnD $yMb0l$",
    "highly detailed, digital painting, artstation, concept art, smooth, sharp focus, illustration",
    "by greg rutkowski and alphonse mucha, unreal engine 5, 8k uhd",
    "low quality, worst quality, bad anatomy, bad hands, text, error, missing fingers",
    "nsfw, lowres, jpeg artifacts, signature, watermark, username, blurry",
    "portrait photo of a 25 y.o. woman, natural skin, freckles, golden hour",
    "macro shot of a dew drop on a leaf, f/2.8, 100mm",
    "a red cube on top of a blue sphere, next to a green pyramid",
    "an oil painting of the mona lisa as a cyborg",
    "aerial view of a river delta, satellite imagery",
    "a diagram of the human heart, labeled, textbook illustration",
    "studio ghibli style village, lush greenery, clouds",
    "vaporwave sunset, palm trees, grid, 80s retro",
    "pixel art of a dungeon, 16-bit, SNES",
    "line art, black and white, coloring book page of a dragon",
    "the quick brown fox jumps over the lazy dog " * 6,
    "word " * 80,
    "🙂" * 60,
    "東京" * 70,
    ", ".join(str(i) for i in range(100)),
]

# Pools for seeded random prompts: many scripts, digits, marks, punctuation, spaces and emoji.
FUZZ_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789٠١٢٣٤٥٦٧٨٩०१२३½²Ⅻ",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿĀāĂăĄąŒœŠšŸŽžẞß",
    "αβγδεζηθικλμνξοπρσςτυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩάέήίόύώ",
    "абвгдежзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯёЁїЇґҐ",
    "あいうえおかきくけこアイウエオカキクケコ漢字東京猫犬山川日本語中文한국어고양이",
    "אבגדהוזחטיابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "कखगघङचछजझञअआइईउऊ্িীুূ",
    "\u0300\u0301\u0302\u0303\u0308\u030a\u0327\u200b\u200c\u200d\ufe0f",
    ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`…—–“”‘’«»",
    " \t\n\r\u00a0\u2003\u3000",
    "🐱🐶🦊🍜🇯🇵👍🏽❤️😀🎨🌸",
]


def _fuzz_prompts(count: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        length = rng.choice([1, 2, 5, 10, 30, 80, 200])
        pools = rng.sample(FUZZ_POOLS, k=rng.randint(1, 4))
        prompts.append("".join(rng.choice(rng.choice(pools)) for _ in range(length)))
    return prompts


def _shared_prompts() -> list[str]:
    return (DATA_DIR / "prompts.txt").read_text(encoding="utf-8").split("\n")


ALL_PROMPTS = _shared_prompts() + OWN_PROMPTS + _fuzz_prompts(400)


@pytest.fixture(scope="module")
def reference(sd15_dir) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(sd15_dir / "tokenizer")


@pytest.fixture(scope="module")
def tokenizer(sd15_dir) -> ClipTokenizer:
    return ClipTokenizer.from_folder(sd15_dir)


def _reference_ids(reference: CLIPTokenizer, prompts: list[str]) -> np.ndarray:
    """What diffusers feeds its text encoder."""
    out = reference(
        prompts, padding="max_length", max_length=reference.model_max_length, truncation=True, return_tensors="np"
    )
    return out.input_ids


def _assert_same_ids(reference, tokenizer, prompts):
    expected = _reference_ids(reference, prompts)
    got = tokenizer.encode(prompts).input_ids
    assert got.shape == expected.shape
    mismatched = [p for p, a, b in zip(prompts, got, expected) if not np.array_equal(a, b)]
    assert not mismatched, f"{len(mismatched)} prompts differ, first: {mismatched[:3]!r}"


def test_prompt_corpus_is_large_and_varied():
    assert len(ALL_PROMPTS) >= 200
    assert len(set(ALL_PROMPTS)) > 500


def test_ids_equal_reference_on_every_prompt(reference, tokenizer):
    _assert_same_ids(reference, tokenizer, ALL_PROMPTS)


def test_shape_dtype_and_known_ids(tokenizer):
    batch = tokenizer.encode(["a photo of a cat", ""])
    assert batch.input_ids.shape == (2, tokenizer.max_length) and batch.input_ids.dtype == np.int64
    # The tokenizer README's worked example (ids from the real vocabulary).
    assert batch.input_ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert batch.lengths == [7, 2]
    assert (batch.input_ids[1, 2:] == tokenizer.pad_id).all()


def test_special_tokens_and_length_come_from_the_folder(tokenizer, reference):
    assert tokenizer.max_length == reference.model_max_length
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (
        reference.bos_token_id,
        reference.eos_token_id,
        reference.pad_token_id,
    )


def test_every_assigned_code_point_normalizes_and_splits_like_reference(reference, tokenizer):
    """Exhaustive over Python's Unicode: the normalizer and the pre-tokenizer agree with the
    reference for each assigned code point (NUL separates them: it composes with nothing)."""
    chars = [
        chr(c)
        for c in range(1, sys.maxunicode + 1)
        if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn"
    ]
    text = "\x00".join(chars)
    backend = reference.backend_tokenizer
    normalized = backend.normalizer.normalize_str(text)
    assert normalize(text) == normalized
    expected_words = [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
    got_words = [to_byte_level(word) for word in tokenizer.pre_tokenize(normalized)]
    assert got_words == expected_words


def test_truncation_keeps_eos_and_reports_what_diffusers_warns_about(reference, tokenizer):
    long_prompt = "a " + "very " * 100 + "long prompt about a red fox"
    batch = tokenizer.encode([long_prompt, "short"])
    row = batch.input_ids[0]
    assert row[-1] == tokenizer.eos_id and batch.lengths[0] == tokenizer.max_length
    # diffusers decodes untruncated_ids[:, max_length - 1 : -1] for its warning.
    untruncated = reference(long_prompt, padding="longest").input_ids
    expected = reference.batch_decode([untruncated[reference.model_max_length - 1 : -1]])[0]
    assert batch.dropped_text == [expected, ""]
    assert batch.dropped_text[0].endswith("long prompt about a red fox")
    assert batch.truncated


def test_decode_matches_reference(reference, tokenizer):
    for prompt in _shared_prompts() + OWN_PROMPTS[:60]:
        ids = reference(prompt).input_ids
        assert tokenizer.decode(ids) == reference.decode(ids), prompt


def _sd2_style_tokenizer(sd15_dir: Path, folder: Path) -> Path:
    """The SD 1.5 vocabulary with SD 2.x's special-token settings (pad "!")."""
    shutil.copytree(sd15_dir / "tokenizer", folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((folder / name).read_text())
        config["pad_token"] = "!"
        (folder / name).write_text(json.dumps(config))
    return folder


def test_sd2_pad_token_bang(sd15_dir, tmp_path):
    folder = _sd2_style_tokenizer(sd15_dir, tmp_path / "sd2-tokenizer")
    reference = CLIPTokenizer.from_pretrained(folder)
    tokenizer = ClipTokenizer.from_folder(folder)
    assert tokenizer.pad_id == reference.pad_token_id == 0
    # "!" is a special token there: "!!!" becomes three pad ids, not the merged "!!!" token.
    prompts = ["wow!!! hi!", "a photo of a cat", "!"] + _shared_prompts() + OWN_PROMPTS
    _assert_same_ids(reference, tokenizer, prompts)


def test_reads_tokenizer_json_when_present(reference, sd15_dir, tmp_path):
    folder = tmp_path / "json-only"
    reference.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    assert (folder / "tokenizer.json").is_file()
    tokenizer = ClipTokenizer.from_folder(folder)
    _assert_same_ids(reference, tokenizer, _shared_prompts() + OWN_PROMPTS)


def test_model_folders_of_all_tiny_kinds(tiny_models):
    for folder in tiny_models.values():
        reference = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        _assert_same_ids(reference, ClipTokenizer.from_folder(folder), _shared_prompts())


def test_missing_or_broken_folders_are_clear_errors(sd15_dir, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        ClipTokenizer.from_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFolderError, match="neither tokenizer.json nor vocab.json"):
        ClipTokenizer.from_folder(empty)
    broken = tmp_path / "broken"
    shutil.copytree(sd15_dir / "tokenizer", broken)
    (broken / "vocab.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="cannot read"):
        ClipTokenizer.from_folder(broken)
    no_length = tmp_path / "no-length"
    shutil.copytree(sd15_dir / "tokenizer", no_length)
    config = json.loads((no_length / "tokenizer_config.json").read_text())
    config["model_max_length"] = int(1e30)
    (no_length / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="model_max_length"):
        ClipTokenizer.from_folder(no_length)


def test_non_string_prompt_is_rejected(tokenizer):
    from sdrt.errors import GenerationError

    with pytest.raises(GenerationError, match="prompt must be text, got int"):
        tokenizer.encode([123])


def test_tokenizer_runs_without_torch_or_transformers(sd15_dir):
    code = (
        "from sdrt.runtime.text.tokenizer import ClipTokenizer\n"
        f"t = ClipTokenizer.from_folder({str(sd15_dir)!r})\n"
        "assert t.encode('a photo of a cat').input_ids[0, :7].tolist() == "
        "[49406, 320, 1125, 539, 320, 2368, 49407]\n"
    )
    script = Path(__file__).parent.parent / "no_heavy_imports.py"
    result = subprocess.run([sys.executable, str(script), code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
