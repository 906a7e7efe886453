"""The house rule: imports point only down the layers, and no module imports itself back.

Every module of ``ernie_paddle`` and ``converters`` is parsed (function-level imports count). A module may
import modules of its own layer or of a lower one, never of a higher one, and the import graph must have no
cycle. The layers are ARCHITECTURE.md's table; a new module belongs to the layer of its longest prefix.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ernie_paddle", "converters")
MAX_LINES = 400

# Lowest first. A module's layer is that of the longest prefix listed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ernie_paddle.errors", "ernie_paddle.progress", "ernie_paddle.version"),
    ("ernie_paddle.config", "ernie_paddle.io", "ernie_paddle.kernels"),
    ("converters.rules", "converters.layout_ops", "converters.expected", "converters.tensor_groups",
     "ernie_paddle.quant", "ernie_paddle.tokenizer"),
    ("ernie_paddle.models",),
    ("converters", "ernie_paddle.planning"),
    ("ernie_paddle.runtime",),
    ("ernie_paddle.api", "converters.parity"),
    ("ernie_paddle.server", "ernie_paddle.devkit"),
    ("ernie_paddle.cli", "ernie_paddle"),
)
# Known debts, to be paid down to nothing: upward (importer, imported) pairs and cycles tolerated for now.
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CYCLES: list[list[str]] = [
]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix of ``module``; -1 when no prefix matches."""
    best, rank = "", -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    return rank


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (absolute or relative, at any depth of the file)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.split(".")[0] in PACKAGES:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    g = {name: imports_of(name, path, known) for name, path in known.items()}
    return g


def upward_imports() -> list[str]:
    bad = []
    for src, targets in graph().items():
        for dst in sorted(targets):
            if layer_of(dst) > layer_of(src) and (src, dst) not in KNOWN_UPWARD:
                bad.append(f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})")
    return sorted(bad)


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [name for name in modules() if layer_of(name) < 0] == []


def test_imports_point_down():
    assert upward_imports() == []


def test_no_import_cycle():
    assert [c for c in cycles() if c not in KNOWN_CYCLES] == []


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


if __name__ == "__main__":  # a report for people: python tests/test_layers.py
    print("\n".join(upward_imports()) or "no upward import")
    print("\n".join(" <-> ".join(c) for c in cycles()) or "no cycle")
