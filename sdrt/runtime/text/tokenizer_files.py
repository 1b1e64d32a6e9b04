"""Reading a tokenizer folder (transformers' layout) with every value's type checked.

`tokenizer.json` when present, otherwise `vocab.json` + `merges.txt`; special tokens and the
maximum length from `tokenizer_config.json` and `special_tokens_map.json` (the latter wins, as
in transformers). A file of the wrong JSON type, a vocabulary that is not token -> id, a merge
that is not two symbols: each is one ModelFolderError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdrt.errors import ModelFolderError
from sdrt.runtime.files.json_files import MAX_CONFIG_BYTES, read_json
from sdrt.runtime.files.user_files import present, read_regular_text

END_OF_WORD = "</w>"
# transformers writes this sentinel as model_max_length when a tokenizer has no limit.
NO_LIMIT_SENTINEL = int(1e29)
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _read(path: Path, *, required: bool, kind: type = dict) -> Any:
    """The JSON value of `path` ({} when optional and missing), checked to be a `kind`."""
    if not present(path, ModelFolderError):
        if required:
            raise ModelFolderError(f"{path} is missing")
        return kind()
    return read_json(path, kind=kind)


def _vocab(value: Any, path: Path) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items()
    ):
        raise ModelFolderError(f"{path}: the vocabulary must map token strings to integer ids")
    return value


def _merges(entries: Any, path: Path) -> list[tuple[str, str]]:
    if not isinstance(entries, list):
        raise ModelFolderError(f"{path}: merges must be a list")
    merges = []
    for number, entry in enumerate(entries, start=1):
        parts = entry.split(" ") if isinstance(entry, str) else entry
        if not isinstance(parts, (list, tuple)) or len(parts) != 2 or not all(isinstance(p, str) for p in parts):
            raise ModelFolderError(f"{path}: merge {number} must be two symbols, got {entry!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_merges(path: Path) -> list[tuple[str, str]]:
    text = read_regular_text(path, MAX_CONFIG_BYTES, ModelFolderError)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # universal newlines, as open() reads
    if lines and lines[0].startswith("#version"):
        lines[0] = ""
    return _merges([line for line in lines if line], path)


def read_tokenizer_json(path: Path) -> tuple[dict, list, dict, str | None]:
    """Vocab, merges, added special tokens and the Split pattern of a CLIP tokenizer.json."""
    data = _read(path, required=True)
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("end_of_word_suffix") != END_OF_WORD:
        model = model if isinstance(model, dict) else {}
        raise ModelFolderError(
            f"{path} is not a CLIP BPE tokenizer (model type {model.get('type')!r}, "
            f"end_of_word_suffix {model.get('end_of_word_suffix')!r})"
        )
    added_entries = data.get("added_tokens") or []
    if not isinstance(added_entries, list) or not all(isinstance(t, dict) for t in added_entries):
        raise ModelFolderError(f"{path}: added_tokens must be a list of objects")
    added = {}
    for token in added_entries:
        if token.get("special"):
            if not isinstance(token.get("content"), str) or not isinstance(token.get("id"), int):
                raise ModelFolderError(f"{path}: an added token needs a string content and an integer id")
            added[token["content"]] = token["id"]
    pattern = None
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict) and step.get("type") == "Split":
            spec = step.get("pattern")
            regex = spec.get("Regex") if isinstance(spec, dict) else None
            if not isinstance(regex, str):
                raise ModelFolderError(f"{path}: the Split pre-tokenizer's pattern must be a regex string")
            pattern = regex
    return _vocab(model.get("vocab"), path), _merges(model.get("merges"), path), added, pattern


def read_tokenizer_folder(folder: Path) -> dict[str, Any]:
    """The keyword arguments of ClipTokenizer for a tokenizer folder."""
    config = _read(folder / "tokenizer_config.json", required=False)
    config.update(_read(folder / "special_tokens_map.json", required=False))
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict) or not all(isinstance(e, dict) for e in decoder.values()):
        raise ModelFolderError(f"{folder}/tokenizer_config.json: added_tokens_decoder must map ids to objects")
    added_tokens: dict[str, int] = {}
    for index, entry in decoder.items():
        if entry.get("special", True):
            if not isinstance(entry.get("content"), str) or not str(index).isdecimal():
                raise ModelFolderError(f"{folder}/tokenizer_config.json: added token {index!r} is malformed")
            added_tokens[entry["content"]] = int(index)
    split_pattern = None
    if present(folder / "tokenizer.json", ModelFolderError):
        vocab, merges, from_json, split_pattern = read_tokenizer_json(folder / "tokenizer.json")
        added_tokens.update(from_json)
    elif present(folder / "vocab.json", ModelFolderError) and present(folder / "merges.txt", ModelFolderError):
        vocab = _vocab(_read(folder / "vocab.json", required=True), folder / "vocab.json")
        merges = read_merges(folder / "merges.txt")
    else:
        raise ModelFolderError(
            f"{folder} has neither tokenizer.json nor vocab.json + merges.txt; "
            "re-export the model or copy its tokenizer folder"
        )

    def special(key: str) -> str:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if not isinstance(value, str) or not value:
            raise ModelFolderError(f"{folder}: {key} is not set in tokenizer_config.json or special_tokens_map.json")
        return value

    max_length = config.get("model_max_length")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length >= NO_LIMIT_SENTINEL:
        raise ModelFolderError(f"{folder}/tokenizer_config.json has no usable model_max_length ({max_length!r})")
    specials = {key: special(key) for key in SPECIAL_TOKEN_KEYS}
    return dict(
        vocab=vocab,
        merges=merges,
        max_length=max_length,
        added_tokens=added_tokens,
        split_pattern=split_pattern,
        **specials,
    )
