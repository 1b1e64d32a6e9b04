"""Names a client sends for files of a folder the server was given (`--lora-dir`,
`--controlnet-dir`): each resolves inside that folder or is refused, and what a client is told
quotes the name as it was sent, never a path of the server's disk.

A name is one plain path component (no separator, no `..`, no NUL, not absolute), and the file
it finds must lie inside the folder once every symlink is resolved.
"""

from __future__ import annotations

import os
from pathlib import Path

#: How much of a refused name an error quotes.
SHOWN_NAME_CHARS = 100
#: What a message says instead of a folder's path.
HIDDEN_FOLDER = "the server's folder"


def shown(name: object) -> str:
    """A client's name as an error quotes it (repr, cut short)."""
    text = str(name)
    return repr(text if len(text) <= SHOWN_NAME_CHARS else text[:SHOWN_NAME_CHARS] + "...")


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a file of a folder (None if it can)."""
    if not isinstance(name, str) or not name.strip():
        return "a name must be non-empty text"
    if "\0" in name:
        return "a name holds no NUL character"
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name) or Path(name).drive:
        return "a name is not a path"
    return None


def inside(path: Path, folder: Path) -> bool:
    """Whether `path`, every symlink resolved, lies inside `folder` (also resolved)."""
    try:
        real, root = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    except (OSError, ValueError):
        return False
    return real == root or root in real.parents


def hide_paths(message: str, paths: dict[Path, str]) -> str:
    """`message` with each path (as given and resolved) replaced by what a client may see."""
    replacements = {}
    for path, replacement in paths.items():
        for form in (str(path), os.path.realpath(path), os.path.abspath(path)):
            if form and form != ".":
                replacements[form] = replacement
    for form in sorted(replacements, key=len, reverse=True):  # the longest first: a folder's files before it
        message = message.replace(form, replacements[form])
    return message
