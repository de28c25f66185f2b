"""Which code a workflow step runs: the svt modules its entry point imports, transitively.

A rule passes ``code=code_hash("svt.probe")`` as a param, so Snakemake reruns the step when
any module it can execute changes, and only then. The import graph is read from the source
(every ``import svt...`` / ``from svt... import ...``, also inside functions), not from
hand-written lists that drift. Launchers (``svt.launch``) start a step without computing
anything in it, like the runtime keys: they are left out.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LAUNCHERS = frozenset({"svt.launch"})


def module_file(module: str, root: Path = PACKAGE_DIR) -> Path | None:
    """svt.a.b -> <root>/a/b.py, or <root>/a/b/__init__.py for a package; None if neither."""
    parts = module.split(".")[1:]
    base = root.joinpath(*parts)
    for f in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
        if f is not None and f.is_file():
            return f
    return None


def _imports(path: Path, root: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "svt"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "svt":
            found.add(node.module)
            # `from svt.datasets import ucf101` imports a module, not only a name
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if module_file(f"{node.module}.{a.name}", root)}
    return found


def _with_parents(module: str) -> list[str]:
    """Importing svt.a.b runs svt/__init__.py and svt/a/__init__.py too."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_modules(entry: str, root: Path = PACKAGE_DIR) -> list[str]:
    """The svt modules ``python -m <entry>`` can execute, sorted, launchers left out."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        mod = todo.pop()
        for m in _with_parents(mod):
            if m in seen or m in LAUNCHERS:
                continue
            f = module_file(m, root)
            if f is None:
                raise ValueError(f"{m}: no such module under {root}")
            seen.add(m)
            todo.extend(_imports(f, root))
    return sorted(seen)


@lru_cache(maxsize=None)
def code_hash(entry: str, root: Path = PACKAGE_DIR) -> str:
    """12 hex digits over the names and sources of ``imported_modules(entry)``."""
    h = hashlib.sha256()
    for m in imported_modules(entry, root):
        h.update(m.encode() + b"\0" + module_file(m, root).read_bytes() + b"\0")
    return h.hexdigest()[:12]
