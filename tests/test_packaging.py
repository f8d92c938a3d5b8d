"""Every third-party module the library or its tools import is declared in setup.py for its users.

Imports are read with ``ast`` (module level and inside functions alike) and mapped to the distributions
that install them; setup.py's ``install_requires`` and ``extras_require`` are read with ``ast`` too (it
is never run). The ``test`` extra does not count: a user of the library does not install it.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "megatron_solo", ROOT / "tools"]
TEST_EXTRA = "test"
# Imported only where present, never beside the test suite's own pins: the accelerators (see
# model/specs.py) and lmms-eval (its own venv, as .ci/run builds it). The distribution a user installs
# for each, None where it comes with NVIDIA's container rather than from PyPI.
OPTIONAL = {"transformer_engine": "transformer-engine", "apex": None, "lmms_eval": "lmms-eval"}
# Generated protobuf modules (``*_pb2``) need protobuf at run time, and the distribution shipping one may
# not require it (sentencepiece does not).
PROTOBUF_MODULE = re.compile(r"_pb2$")


_installed = functools.cache(importlib.metadata.packages_distributions)


def _normalize(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0))


def _setup_keywords() -> dict[str, ast.expr]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords}


def declared() -> set[str]:
    """Distributions setup.py declares for users: install_requires and every extra but the test one."""
    keywords = _setup_keywords()
    names = set(ast.literal_eval(keywords["install_requires"]))
    for extra, requirements in ast.literal_eval(keywords["extras_require"]).items():
        if extra != TEST_EXTRA:
            names |= set(requirements)
    return {_requirement_name(r) for r in names}


def third_party_imports() -> dict[str, list[str]]:
    """Dotted module name -> the places (file:line) importing it, for every import outside stdlib and us."""
    found: dict[str, list[str]] = {}
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    modules = [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top != "megatron_solo" and top not in sys.stdlib_module_names:
                        found.setdefault(module, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def needed_distributions(module: str) -> list[set[str]]:
    """For one imported module, the distributions it needs (each entry: any one of the set will do)."""
    top = module.split(".")[0]
    if top in OPTIONAL:
        return [{_normalize(OPTIONAL[top])}] if OPTIONAL[top] else []
    installed = _installed().get(top)
    assert installed, f"{module}: not installed here, so its distribution cannot be told"
    needs = [{_normalize(d) for d in installed}]
    if any(PROTOBUF_MODULE.search(part) for part in module.split(".")):
        needs.append({"protobuf"})
    return needs


def test_every_import_is_declared():
    have = declared()
    missing = []
    for module, places in sorted(third_party_imports().items()):
        for options in needed_distributions(module):
            if not options & have:
                missing.append(f"{module} needs {' or '.join(sorted(options))} (imported at {places[0]})")
    assert not missing, "not declared in setup.py:\n" + "\n".join(missing)


def test_the_check_sees_lazy_and_generated_imports():
    imports = third_party_imports()
    assert "sentencepiece.sentencepiece_model_pb2" in imports  # inside a function (vocab/tokenizers.py)
    assert {"protobuf"} in needed_distributions("sentencepiece.sentencepiece_model_pb2")


def test_the_image_installs_what_setup_py_states_and_restates_nothing():
    """The Dockerfile installs the package by its own requirements; a version stated twice drifts apart."""
    installs = [line for line in (ROOT / "Dockerfile").read_text().splitlines()
                if "pip install" in line and not line.lstrip().startswith("#")]
    assert any('-e ".[' in line or "-e ." in line for line in installs), installs
    restated = sorted(name for name in declared() for line in installs
                      if re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", line, re.IGNORECASE))
    assert not restated, f"Dockerfile restates setup.py's requirements: {restated}"
