"""The import graph of ``src/fdalign``, read from the AST of every module (imports inside functions count).

No circle, and no arrow upward: the layers are, from the bottom, backends -> prompts / prototypes /
spc -> losses -> data -> selection -> heads -> train / eval -> workflows -> experiments -> cli.
"""

import ast
import graphlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# fixed on another branch (the report <-> plots helper); the lead removes this at merge
KNOWN_CIRCLES: list[set[str]] = []  # none: keep it that way
LOWER = (
    "fdalign.heads",
    "fdalign.eval",
    "fdalign.data",
    "fdalign.backends",
    "fdalign.losses",
    "fdalign.prototypes",
    "fdalign.spc",
    "fdalign.prompts",
    "fdalign.selection",
)
HIGHER = ("fdalign.train", "fdalign.experiments", "fdalign.cli", "fdalign.workflows")


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "fdalign").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The fdalign modules ``name`` imports; ``from pkg import sub`` names the submodule."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    """``{module: the modules it imports}``."""
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _edges(g):
    return [(a, b) for a, targets in g.items() for b in targets]


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_lazy_imports():
    g = _graph()
    assert "fdalign.workflows" in g["fdalign.cli.train"]  # an import inside run()
    assert "fdalign.data.fewshot" in g["fdalign.data.opener"]  # `from fdalign.data import fewshot`
    assert len(g) > 60


def test_no_import_circle():
    g = _graph()
    for circle in KNOWN_CIRCLES:  # only the edges inside a known circle are forgiven
        for a in circle:
            g[a] = g[a] - circle
    try:
        list(graphlib.TopologicalSorter(g).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import circle: {' -> '.join(e.args[1])}")


@pytest.mark.parametrize(
    "lower, forbidden",
    [
        (LOWER, HIGHER),
        (("fdalign.experiments",), ("fdalign.train", "fdalign.eval", "fdalign.cli")),  # through workflows only
        (("fdalign.workflows",), ("fdalign.experiments", "fdalign.cli")),
        (("fdalign.train", "fdalign.eval"), ("fdalign.workflows", "fdalign.experiments", "fdalign.cli")),
    ],
)
def test_no_arrow_upward(lower, forbidden):
    g = _graph()
    bad = sorted(
        f"{a} -> {b}"
        for a, b in _edges(g)
        if _under(a, lower)
        and _under(b, forbidden)
        and not (_under(a, ("fdalign.workflows",)) and _under(b, ("fdalign.workflows",)))
    )
    assert not bad, "arrows upward:\n" + "\n".join(bad)


def _runs_clean(code: str) -> None:
    """``code`` passes in a fresh interpreter (nothing imported yet) on this checkout's sources."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert done.returncode == 0, done.stderr


def test_import_fdalign_is_light_and_its_names_resolve():
    code = (
        "import sys, fdalign; assert 'torch' not in sys.modules, 'import fdalign loaded torch'; "
        "assert callable(fdalign.finetune) and callable(fdalign.FDAlignLoss) and callable(fdalign.evaluate); "
        "assert set(fdalign.__all__) <= set(dir(fdalign))"
    )
    _runs_clean(code)


def test_the_command_line_builds_its_help_without_torch():
    """`fdalign --help` and every option list come from torch-free modules (configs, episode spec, io):
    loading torch would make each help or typo cost a second."""
    code = (
        "import sys; from fdalign.cli import build_parser; p = build_parser(); p.format_help(); "
        "mods = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'); "
        "assert not mods, 'building the parser loaded ' + ', '.join(mods[:3])"
    )
    _runs_clean(code)
