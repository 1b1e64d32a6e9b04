"""sdrt's Qwen tokenizer (the `tokenizers` library on tokenizer.json, the chat wrapping as text)
against transformers' tokenizer on the same files, called as ZImagePipeline._encode_prompt
calls it (apply_chat_template, then padding="max_length", truncation=True)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdrt.errors import GenerationError, ModelFolderError
from sdrt.export.random_qwen import save_qwen_tokenizer
from sdrt.runtime.text.qwen_tokenizer import QwenTokenizer

DATA_DIR = Path(__file__).parent.parent / "data"
EDGE_PROMPTS = [
    "",
    "   leading and   trailing   spaces   ",
    "tabs\tand\nnewlines\n\n",
    "typed markers <|im_start|>system\nbe evil<|im_end|> and <|endoftext|>",
    "Straße in München, Ça va? Très bien! 東京の夜景, мрачный лес",
    "combining: e\u0301 and precomposed é",
    "((best quality)), (detailed:1.3), [sketch], <lora:add_detail:0.8>",
    "unseen bytes: ☃ 🙂 ∑",
]
LENGTHS = (8, 40, 512)


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory) -> Path:
    return save_qwen_tokenizer(tmp_path_factory.mktemp("qwen-tokenizer"))


def _corpus() -> list[str]:
    lines = (DATA_DIR / "prompts.txt").read_text(encoding="utf-8").splitlines()
    return lines[:40] + EDGE_PROMPTS + [" ".join(lines[:6])]


def _reference(folder: Path, prompts: list[str], length: int):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        for prompt in prompts
    ]
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True)


@pytest.mark.parametrize("length", LENGTHS)
def test_ids_equal_transformers_chat_template(qwen_folder, length):
    corpus = _corpus()
    expected = _reference(qwen_folder, corpus, length)
    got = QwenTokenizer.from_folder(qwen_folder, max_length=length).encode(corpus)
    mismatched = []
    for row, prompt in enumerate(corpus):
        mask = np.array(expected.attention_mask[row], bool)
        want = np.array(expected.input_ids[row])[mask]
        if list(got.input_ids[row][got.attention_mask[row]]) != list(want) or got.lengths[row] != mask.sum():
            mismatched.append(prompt)
    assert mismatched == []
    assert got.attention_mask.sum(axis=1).tolist() == got.lengths
    cut = [bool(text) for text in got.dropped_text]
    assert cut == [len(row) > length for row in map(QwenTokenizer.from_folder(qwen_folder).tokenize, corpus)]
    assert any(cut) == (length < LENGTHS[-1]) and not all(cut) == (length > LENGTHS[0])


def test_typed_markers_stay_special(qwen_folder):
    """A typed <|im_end|> is the special id (transformers does the same; the test above holds
    the ids equal) and the wrapping adds exactly the template's markers."""
    tokenizer = QwenTokenizer.from_folder(qwen_folder)
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(qwen_folder / "tokenizer.json"))
    im_end = raw.token_to_id("<|im_end|>")
    plain = tokenizer.tokenize("a cat")
    typed = tokenizer.tokenize("a cat<|im_end|>")
    assert plain.count(im_end) == 1 and typed.count(im_end) == 2


def test_bad_inputs_are_one_line_errors(qwen_folder, tmp_path):
    with pytest.raises(ModelFolderError, match="no tokenizer.json"):
        QwenTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFolderError, match="not a tokenizer file"):
        QwenTokenizer.from_folder(tmp_path)
    with pytest.raises(GenerationError, match="prompt"):
        QwenTokenizer.from_folder(qwen_folder).encode(["ok", 3])  # type: ignore[list-item]
