"""The default model: a ready ONNX export on the Hugging Face hub (diffusers' ONNX layout), fetched
once into the hub's own cache with huggingface_hub (no torch, no export), its files checked against
the hashes the cache names them by, and run as a diffusers ONNX folder (its manifest inferred).

CompVis/stable-diffusion-v1-4 at its `onnx` revision: Stable Diffusion v1.4 converted by diffusers'
ONNX script, fp32, under the CreativeML OpenRAIL-M license (use and redistribution allowed, with the
license's use restrictions). The safety checker and feature extractor are not fetched: sdrt runs
neither."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from sdrt.errors import SdrtError

DEFAULT_REPO = "CompVis/stable-diffusion-v1-4"
DEFAULT_REVISION = "onnx"
DEFAULT_LICENSE = "CreativeML OpenRAIL-M"
#: From the parameter counts in fp32 (UNet 860 M, CLIP text encoder 123 M, VAE 84 M parameters).
DEFAULT_DOWNLOAD = "about 4.3 GB (UNet 3.4 GB, text encoder 0.5 GB, VAE 0.3 GB)"
#: What the runtime reads of the repository (huggingface_hub's allow_patterns).
FETCHED = (
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/*",
    "unet/*",
    "vae_decoder/*",
    "vae_encoder/*",
)
#: The files without which the folder is no model (the tokenizer's, vocab.json and merges.txt or a
#: tokenizer.json, the runtime's tokenizer loader checks; every fetched file is checked by hash).
REQUIRED = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/model.onnx",
    "unet/model.onnx",
    "vae_decoder/model.onnx",
)
#: How long the hub's address may take to resolve and answer before sdrt calls it unreachable.
REACH_TIMEOUT_S = 3.0
HTTPS_PORT, HTTP_PORT = 443, 80
#: The cache names a file's blob by its hash: sha256 for LFS files, git's blob sha1 for the others.
SHA256_HEX, SHA1_HEX = 64, 40
HASH_CHUNK = 1 << 24
#: sdrt's record of the snapshots whose files it has checked (size and mtime of each), so that a
#: 4 GB model is hashed once, not at every run.
CHECKED_FOLDER = "hub-checked"

OFFLINE_FIX = (
    "pass --model DIR (an export, a diffusers folder or a checkpoint) or set $SDRT_MODEL, "
    "or try the whole path offline with `sdrt export --random tiny --out DIR`"
)


def _quiet_hub() -> None:
    """Nothing from huggingface_hub's logger; its bars only where the caller shows them."""
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()


def _snapshot(local_only: bool, progress: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    _quiet_hub()
    (enable_progress_bars if progress else disable_progress_bars)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = snapshot_download(
            DEFAULT_REPO, revision=DEFAULT_REVISION, allow_patterns=list(FETCHED), local_files_only=local_only
        )
    return Path(folder)


def cached_default() -> Path | None:
    """The default model's folder when the hub's cache holds all of it, else None (no network)."""
    try:
        folder = _snapshot(local_only=True, progress=False)
    except Exception:  # huggingface_hub's "not in the cache" errors, whatever their class
        return None
    return folder if all((folder / name).is_file() for name in REQUIRED) else None


def hub_reachable(endpoint: str | None = None) -> bool:
    """Whether the hub's host resolves and accepts a connection within REACH_TIMEOUT_S (in a thread:
    a stuck resolver cannot hold the command)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (HTTPS_PORT if parts.scheme == "https" else HTTP_PORT)
    reached: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(REACH_TIMEOUT_S)
    return bool(reached)


def _file_hash(path: Path, algorithm: str) -> str:
    if algorithm == "sha256":
        from sdrt.runtime.files.integrity import hash_file

        return hash_file(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # git's blob hash: a header, the content
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def check_files(folder: Path, record_root: Path) -> None:
    """Every file of the snapshot against the hash its cache blob is named by (once per snapshot;
    a file changed since is checked again). A mismatch is one line naming the file and the fix."""
    record = record_root / CHECKED_FOLDER / f"{folder.name}.json"
    try:
        checked = json.loads(record.read_text())
    except (OSError, ValueError):
        checked = {}
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        name = path.relative_to(folder).as_posix()
        if checked.get(name) == _stamp(path):
            continue
        blob = Path(os.path.realpath(path)).name
        algorithm = {SHA256_HEX: "sha256", SHA1_HEX: "sha1"}.get(len(blob))
        if algorithm is not None and _file_hash(path, algorithm) != blob:
            raise SdrtError(
                f"the default model's {name} is damaged (its hash is not the hub's); delete "
                f"{folder.parent.parent} and run again to fetch it anew"
            )
        checked[name] = _stamp(path)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(checked, indent=1))


def fetch_default(say, progress: bool) -> Path:
    """The default model's folder: from the cache, else downloaded once (one line says what and how
    much); offline, one line with what to do instead, within a few seconds."""
    from sdrt.runtime.engines.ort_cache import cache_root

    folder = cached_default()
    if folder is None:
        if not hub_reachable():
            raise SdrtError(
                f"the default model {DEFAULT_REPO} ({DEFAULT_REVISION}) is not downloaded and the "
                f"Hugging Face hub cannot be reached: {OFFLINE_FIX}"
            )
        say(
            f"downloading the default model {DEFAULT_REPO} (ONNX, {DEFAULT_LICENSE}) once into the "
            f"Hugging Face cache: {DEFAULT_DOWNLOAD}; set $SDRT_MODEL or pass --model to use another"
        )
        try:
            folder = _snapshot(local_only=False, progress=progress)
        except Exception as error:  # network, auth (a gated repository), disk: one line each
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SdrtError(f"downloading the default model {DEFAULT_REPO} failed: {reason}; {OFFLINE_FIX}") from None
        missing = [name for name in REQUIRED if not (folder / name).is_file()]
        if missing:
            raise SdrtError(f"the default model {DEFAULT_REPO} lacks {', '.join(missing)}; {OFFLINE_FIX}")
    check_files(folder, cache_root())
    return folder
