"""The dependency rule of docs/architecture.md, checked over the import graph of the source.

    base (units, audio, heap)  <-  voice  <-  runtime  <-  backend (backend, synthesis, calibration)
        <-  consumers (CLI, service, experiments)

Every import counts, at module level or inside a function: a lazy import is still a dependency, and
the cycles this test exists for (the estimator importing the backend to calibrate, the engine
importing its own reference) were lazy ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adaptive_tts", "experiments")

#: Layer of a module by its dotted-name prefix (longest prefix wins); higher layers may import lower
#: ones and their own, never a higher one.
LAYERS = {
    "adaptive_tts": 0,  # the package root: lazy exports only (checked below)
    "adaptive_tts.units": 0,
    "adaptive_tts.audio": 0,
    "adaptive_tts.heap": 0,
    "adaptive_tts.voice": 1,
    "adaptive_tts.runtime": 2,
    "adaptive_tts.backend": 3,
    "adaptive_tts.synthesis": 3,
    "adaptive_tts.options": 3,
    "adaptive_tts.calibration": 3,
    "adaptive_tts.server": 4,
    "adaptive_tts.__main__": 4,
    "experiments": 4,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from x import y`` counts ``x.y`` when that is a module)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def layer(name: str) -> int:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def test_the_graph_sees_the_modules_and_their_imports() -> None:
    edges = graph()
    assert "adaptive_tts.voice.speech" in edges["adaptive_tts.voice.engine"]
    assert "adaptive_tts.backend" in edges["adaptive_tts.server.service"]
    assert "adaptive_tts.runtime.planner" in edges["adaptive_tts.backend"]


def test_no_module_imports_upwards() -> None:
    upward = sorted(
        f"{a} -> {b}" for a, targets in graph().items() for b in targets if layer(b) > layer(a) and a != "adaptive_tts"
    )
    assert upward == []


def test_the_package_root_imports_only_lazily() -> None:
    """``from adaptive_tts import X`` resolves on first use (PEP 562): the root imports nothing of the
    project at import time, so it cannot close a cycle."""
    tree = ast.parse((ROOT / "adaptive_tts" / "__init__.py").read_text())
    eager = [
        ast.unparse(node)
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and (node.level or (node.module or "").startswith("adaptive_tts"))
        or isinstance(node, ast.Import)
        and any(a.name.startswith("adaptive_tts") for a in node.names)
    ]
    assert eager == []


def test_no_import_cycles() -> None:
    edges = {a: {b for b in targets if b != "adaptive_tts"} for a, targets in graph().items() if a != "adaptive_tts"}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_relative_imports_resolve_to_the_modules_they_name(tmp_path: Path) -> None:
    """The checker itself, on a made-up package ``p`` with modules ``a`` and ``b``: ``from . import b``
    in ``p.a`` is an edge to ``p.b``, and ``from .a import g`` in the package's ``__init__`` one to
    ``p.a`` (a package's level-1 import is relative to itself, a module's to its package)."""
    known = {"p", "p.a", "p.b"}
    module, package = tmp_path / "a.py", tmp_path / "__init__.py"
    module.write_text("from . import b\nfrom .b import f\n")
    package.write_text("from .a import g\n")
    assert imports_of("p.a", module, known) == {"p.b"}
    assert imports_of("p", package, known) == {"p.a"}


def test_every_package_export_resolves_to_the_class_its_module_defines() -> None:
    import importlib

    import adaptive_tts

    assert sorted(adaptive_tts.__all__) == sorted(adaptive_tts._EXPORTS)
    for name, module in adaptive_tts._EXPORTS.items():
        assert getattr(adaptive_tts, name) is getattr(importlib.import_module(module), name)
