"""sdrt's T5 tokenizer (the `tokenizers` library on tokenizer.json) against transformers'
T5TokenizerFast converted from the SentencePiece model alone, and against SentencePiece itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sdrt.errors import ModelFolderError
from sdrt.export.random_flux import SPIECE_MODEL, t5_tokenizer_from_spiece
from sdrt.runtime.text.t5_tokenizer import T5Tokenizer

DATA_DIR = Path(__file__).parent.parent / "data"
SHARED_PROMPTS = Path("/work/shared/prompts.txt")
EDGE_PROMPTS = [
    "",
    "   leading and   trailing   spaces   ",
    "tabs\tand\nnewlines",
    "a cat </s> and <extra_id_3> typed in",
    "Straße in München, Ça va? Très bien! 東京の夜景, мрачный лес",
    "((best quality)), (detailed:1.3), [sketch], <lora:add_detail:0.8>",
    "unknown pieces: ☃ 🙂 ∑",
]
LENGTHS = (8, 32, 77)


def _corpus() -> list[str]:
    lines = (DATA_DIR / "prompts.txt").read_text(encoding="utf-8").splitlines()
    if SHARED_PROMPTS.is_file():
        lines += SHARED_PROMPTS.read_text(encoding="utf-8").splitlines()
    return lines + EDGE_PROMPTS + [" ".join(lines[:4])]  # the last is longer than every length


@pytest.fixture(scope="module")
def spiece_only(tiny_flux, tmp_path_factory) -> Path:
    """A tokenizer folder with the SentencePiece model only (what Google's T5 releases ship)."""
    folder = tmp_path_factory.mktemp("spiece-only")
    shutil.copy(tiny_flux["dev"] / "tokenizer_2" / SPIECE_MODEL, folder / SPIECE_MODEL)
    return folder


@pytest.mark.parametrize("length", LENGTHS)
def test_ids_equal_transformers_padded_and_truncated(tiny_flux, spiece_only, length):
    ours = T5Tokenizer.from_folder(tiny_flux["dev"] / "tokenizer_2", max_length=length)
    reference = t5_tokenizer_from_spiece(spiece_only)
    corpus = _corpus()
    expected = reference(corpus, padding="max_length", max_length=length, truncation=True).input_ids
    got = ours.encode(corpus)
    assert got.input_ids.shape == (len(corpus), length)
    mismatched = [text for text, row, want in zip(corpus, got.input_ids, expected) if list(row) != want]
    assert mismatched == []
    assert any(got.dropped_text) and not all(got.dropped_text)  # the corpus has cut and whole prompts


def test_pieces_equal_sentencepiece(tiny_flux):
    """An independent implementation of the unigram model: SentencePiece's own encoder (plus
    eos), on text it normalizes the same way (no typed special tokens)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(tiny_flux["dev"] / "tokenizer_2" / SPIECE_MODEL))
    ours = T5Tokenizer.from_folder(tiny_flux["dev"] / "tokenizer_2", max_length=512)
    corpus = [text for text in _corpus() if "</s>" not in text and "<extra_id" not in text]
    for text in corpus:
        assert ours.tokenize(text) == processor.encode(text), text
    assert ours.eos_id == processor.eos_id() and ours.pad_id == processor.pad_id()


def test_truncation_keeps_eos_and_reports_dropped_text(tiny_flux):
    ours = T5Tokenizer.from_folder(tiny_flux["dev"] / "tokenizer_2", max_length=6)
    encoded = ours.encode("a red fox in a snowy forest at dawn")
    row = encoded.input_ids[0]
    assert row[-1] == ours.eos_id and ours.pad_id not in row
    assert "dawn" in encoded.dropped_text[0]
    short = ours.encode("fox").input_ids[0]
    assert short[-1] == ours.pad_id and ours.eos_id in short and np.count_nonzero(short == ours.eos_id) == 1


def test_bad_tokenizer_files_are_one_error(tmp_path):
    with pytest.raises(ModelFolderError, match="no tokenizer.json"):
        T5Tokenizer.from_folder(tmp_path, max_length=8)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFolderError, match="not a tokenizer file"):
        T5Tokenizer.from_folder(tmp_path, max_length=8)
