"""Run as `python tests/no_heavy_imports.py CODE`: executes CODE with torch, transformers,
diffusers, scipy and optimum made unimportable, to prove the runtime does not need them."""

import importlib.abc
import sys

BLOCKED = ("torch", "transformers", "diffusers", "scipy", "optimum")


class BlockHeavyImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the sdrt runtime must not import it")
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, BlockHeavyImports())
    exec(compile(sys.argv[1], "<check>", "exec"), {"__name__": "__check__"})
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if leaked:
        sys.exit(f"heavy modules were imported: {leaked}")
