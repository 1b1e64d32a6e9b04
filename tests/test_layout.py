"""README's Layout section against the tree: every package under sdrt/ is listed, every top-level
runtime module is named, and every sdrt/ path it names exists. A new folder of modules then
fails here until the Layout says what it is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOT = ROOT / "sdrt"
RUNTIME = PACKAGE_ROOT / "runtime"


def layout_section() -> str:
    """README.md's `## Layout` section, up to the next second-level heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def package_dirs() -> list[str]:
    """Every folder under sdrt/ (sdrt/ included) that holds .py files, as 'sdrt/a/b'."""
    folders = {path.parent for path in PACKAGE_ROOT.rglob("*.py") if "__pycache__" not in path.parts}
    return sorted(folder.relative_to(ROOT).as_posix() for folder in folders)


def mentions(section: str, package: str) -> bool:
    """`package` ('sdrt/runtime/text') named on its own, as sdrt/runtime/text(/) or
    sdrt.runtime.text.checks; a child (sdrt/runtime/text/prompts/) or a module (sdrt.runtime.text.bpe)
    does not count."""
    slashed = rf"(?<![\w./]){re.escape(package)}/?(?![\w/])"
    dotted = rf"(?<![\w./]){re.escape(package.replace('/', '.'))}(?!\.?\w)"
    return re.search(slashed, section) is not None or re.search(dotted, section) is not None


def test_mentions_helper():
    assert mentions("sdrt/runtime/text/   tokenizer", "sdrt/runtime/text")
    assert mentions("see sdrt.runtime.text.", "sdrt/runtime/text")
    assert not mentions("sdrt/runtime/text/prompts/   schedule", "sdrt/runtime/text")
    assert not mentions("sdrt.runtime.text.bpe", "sdrt/runtime/text")
    assert not mentions("sdrt/runtime/textual/", "sdrt/runtime/text")


def test_layout_lists_every_package():
    section = layout_section()
    packages = [p for p in package_dirs() if p != "sdrt"]
    assert "sdrt/runtime" in packages  # the walk found the tree
    missing = [p for p in packages if not mentions(section, p)]
    assert not missing, f"README.md's Layout does not list {', '.join(p + '/' for p in missing)}"


def test_layout_names_every_top_level_runtime_module():
    section = layout_section()
    modules = sorted(p.name for p in RUNTIME.glob("*.py") if p.name != "__init__.py")
    assert modules
    missing = [m for m in modules if not re.search(rf"(?<![\w/.]){re.escape(m)}\b", section)]
    assert not missing, f"README.md's Layout does not name sdrt/runtime/{', '.join(missing)}"


def test_layout_paths_exist():
    section = layout_section()
    named = set(re.findall(r"(?<![\w./])(sdrt/[\w/]*\w(?:\.\w+)?)/?", section))
    assert named
    stale = sorted(path for path in named if not (ROOT / path).exists())
    assert not stale, f"README.md's Layout names paths that do not exist: {', '.join(stale)}"
