"""The house's floors: no package imports one above it, none on its own floor but itself, and no circles.

Floors, lowest first (README "What is where"); every import of megatron_solo code counts, at module
level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_solo"
FLOORS = [["_csrc", "errors"], ["vocab"], ["config"], ["platform"], ["data"], ["model"], ["checkpoint"], ["hf"],
          ["training", "evaluation"]]
FLOOR_OF = {name: i for i, names in enumerate(FLOORS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """megatron_solo modules imported by ``path`` (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("megatron_solo")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("megatron_solo"):
                subs = {f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}")}
                out |= subs
                if len(subs) < len(node.names):  # names defined in the module itself (or its __init__)
                    out.add(mod)
    return out


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_floor():
    top = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
           if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert top <= set(FLOOR_OF), f"packages without a floor in this test: {sorted(top - set(FLOOR_OF))}"


def _violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imported in graph.items():
        mine = _package(module)
        for target in imported:
            theirs = _package(target)
            if mine and theirs and mine != theirs and FLOOR_OF[theirs] >= FLOOR_OF[mine]:
                bad.append(f"{module} imports {target}")
    return sorted(bad)


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """One circle per back edge found by a depth-first walk (an import of a package is of its __init__)."""
    state: dict[str, int] = {}
    found = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                found.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_no_import_runs_up_or_sideways():
    bad = _violations(_graph())
    assert not bad, "imports against the floors:\n" + "\n".join(bad)


def test_no_import_circles():
    circles = _cycles(_graph())
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checks_catch_what_they_look_for():
    """An upward import and a circle in a made-up graph are reported (the checks cannot pass vacuously)."""
    assert _violations({"megatron_solo.data.x": {"megatron_solo.training.loop"}}) == [
        "megatron_solo.data.x imports megatron_solo.training.loop"]
    assert _violations({"megatron_solo.hf.a": {"megatron_solo.training.b"}})  # sideways, same floor
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert "megatron_solo.checkpoint.state" in _graph()["megatron_solo.hf.importer"]
