"""Every code block of README.md and docs/ runs, in order, page by page, in a fresh folder.

- ``bash`` blocks run in bash (``-e``) with ``fdalign`` and ``python`` meaning this checkout, offline;
- ``python`` blocks run in one namespace per page;
- ``yaml`` blocks must parse; one whose first line is ``# file: NAME`` is written to NAME for the next blocks;
- ``bibtex`` blocks must be one balanced entry; ``text`` blocks are layouts and outputs, not code.

A block that needs a GPU, the network, real data sets or hours sits under ``<!-- docs-test: skip WHY -->``;
the skipped blocks are counted (at most ``MAX_SKIPPED``) and each says why. A block under
``<!-- docs-test: ci -->`` is one CI runs: each of its lines must be in ``.ci/run``.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import fdalign

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(fdalign.__file__).resolve().parents[1]  # the sources under test (tools/plant_bugs.py: a scratch copy)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGUAGES = {"bash", "python", "yaml", "bibtex", "text"}
MAX_SKIPPED = 48  # grows only with a reason on the block: GPU, network, real data sets, downloaded weights or hours
# (16 on the site's own pages; 32 on the feature pages: data prepare, LoRA, the Python API, trust, methods, scale)
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
MARKER = re.compile(r"^\s*<!-- docs-test: (?P<kind>skip|ci)(?P<why>.*?)-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # "skip" or "ci" when the line above the fence says so
    why: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.lang})"


def code_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order (indented fences inside list items too)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start = m["indent"], i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        above = MARKER.match(lines[start - 1]) if start else None
        marker, why = (above["kind"], above["why"].strip()) if above else (None, "")
        blocks.append(Block(page, start + 1, m["lang"], "\n".join(body) + "\n", marker, why))
        i += 1
    return blocks


ALL = [b for page in PAGES for b in code_blocks(page)]


def _shims(tmp: Path) -> dict[str, str]:
    """The environment of bash blocks: ``fdalign`` / ``python`` are this checkout's, nothing downloads."""
    bin_dir = tmp / ".bin"
    bin_dir.mkdir()
    for name, target in (("fdalign", f'"{sys.executable}" -m fdalign'), ("python", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(SRC),
        "FDALIGN_CACHE": str(tmp / ".cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "COLUMNS": "120",
    }


def run_block(block: Block, tmp: Path, env: dict, scope: dict) -> None:
    if block.lang == "bash":
        done = subprocess.run(["bash", "-e", "-c", block.code], cwd=tmp, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (
            f"{block} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    elif block.lang == "python":
        exec(compile(block.code, str(block), "exec"), scope)
    elif block.lang == "yaml":
        yaml.safe_load(block.code)
        first = block.code.splitlines()[0]
        if first.startswith("# file: "):
            (tmp / first.removeprefix("# file: ").strip()).write_text(block.code)
    elif block.lang == "bibtex":
        assert block.code.lstrip().startswith("@") and block.code.count("{") == block.code.count("}"), str(block)


def run_page(page: Path, tmp: Path, monkeypatch) -> dict:
    """Run the page's blocks in ``tmp``; returns the namespace its Python blocks shared."""
    env = _shims(tmp)
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("FDALIGN_CACHE", env["FDALIGN_CACHE"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scope: dict = {"__name__": "__docs__"}
    for block in code_blocks(page):
        if block.marker is None:
            run_block(block, tmp, env, scope)
    return scope


def test_every_block_has_a_known_language():
    bad = [str(b) for b in ALL if b.lang not in LANGUAGES]
    assert not bad, f"give these blocks one of {sorted(LANGUAGES)}: {bad}"
    assert len(PAGES) >= 15 and sum(b.lang in ("bash", "python") for b in ALL) >= 25


def test_skipped_blocks_are_few_and_say_why():
    skipped = [b for b in ALL if b.marker == "skip"]
    listing = "\n".join(f"  {b}: {b.why}" for b in skipped)
    print(f"{len(skipped)} skipped blocks:\n{listing}")
    assert len(skipped) <= MAX_SKIPPED, f"{len(skipped)} blocks skipped (at most {MAX_SKIPPED}):\n{listing}"
    assert all(len(b.why.split()) >= 3 for b in skipped), f"say why each block is skipped:\n{listing}"
    assert all(b.lang in ("bash", "python") for b in skipped), "only code is skipped"


def test_ci_blocks_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    blocks = [b for b in ALL if b.marker == "ci"]
    assert blocks, "README's Checks block is marked <!-- docs-test: ci -->"
    for b in blocks:
        for line in b.code.strip().splitlines():
            assert line.strip() in ci, f"{b}: .ci/run does not run {line.strip()!r}"


def test_readme_python_is_examples_quickstart():
    """mypy checks examples/quickstart.py: README must show exactly its code."""
    (readme,) = [b for b in code_blocks(ROOT / "README.md") if b.lang == "python"]
    example = (ROOT / "examples" / "quickstart.py").read_text()
    body = example.split('"""', 2)[2].strip() if example.startswith('"""') else example.strip()
    assert readme.code.strip() == body


def test_readme_runs(tmp_path, monkeypatch):
    scope = run_page(ROOT / "README.md", tmp_path, monkeypatch)
    import json

    run = scope["run"]
    written = json.loads((tmp_path / "runs" / "quick" / "metrics.json").read_text())
    assert written["metrics"]["test"]["fine-tuned"]["top1"] == run.metrics["test"]["fine-tuned"]["top1"]
    assert set(run.metrics) == {"test"} and run.paths["model"].is_file()
    assert set(scope["evaluation"].metrics) == {"test", "sketch"}
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 4 and rows[0].startswith("path,top1,top1_prob,top2")  # 3 classes x 4 test images
    assert (tmp_path / "exports" / "cli" / "open_clip_model.safetensors").is_file()


def test_methods_page_runs(tmp_path, monkeypatch):
    scope = run_page(ROOT / "docs" / "methods-overview.md", tmp_path, monkeypatch)
    loss, loss_fn, clip = scope["loss"], scope["loss_fn"], scope["clip"]
    assert loss.ndim == 0 and bool(loss.isfinite())
    # the backward pass reaches the trainable encoder, and f0 is a real frozen copy: with ft used
    # twice the KL would stay exactly zero after ft has moved
    assert any(p.grad is not None for p in clip.image_encoder.parameters())
    assert loss_fn.f0 is not clip.image_encoder and not any(p.requires_grad for p in loss_fn.f0.parameters())
    assert scope["parts"]["kl"].item() > 0


OTHER_PAGES = [p for p in PAGES if p.name != "README.md" and p.name != "methods-overview.md"]


@pytest.mark.parametrize("page", OTHER_PAGES, ids=[str(p.relative_to(ROOT)) for p in OTHER_PAGES])
def test_page_runs(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch)


def test_stub_names_the_lazy_exports():
    """``__init__.pyi`` gives type checkers the names ``__init__.py`` loads lazily: the same set."""
    import ast

    stub = ast.parse((SRC / "fdalign" / "__init__.pyi").read_text())
    names = {a.asname or a.name for node in stub.body if isinstance(node, ast.ImportFrom) for a in node.names}
    assert names | {"__version__"} == set(fdalign.__all__)


def test_mypy_fails_on_a_wrong_argument_type_in_the_readme_example(tmp_path):
    """CI's mypy sees the real signatures behind ``fdalign``'s lazy names (``__init__.pyi``): a README example
    with a wrong argument type fails it, the example as written passes."""
    pytest.importorskip("mypy")
    example = (ROOT / "examples" / "quickstart.py").read_text()
    planted = {
        "shots_str.py": example.replace("shots=2,", 'shots="2",'),
        "finetune_path.py": example.replace("fdalign.finetune(config)", 'fdalign.finetune("runs/quick")'),
    }
    assert all(code != example for code in planted.values())
    for name, code in {"as_written.py": example, **planted}.items():
        (tmp_path / name).write_text(code)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            *sorted(str(p) for p in tmp_path.glob("*.py")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(SRC)},
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if "as_written.py" in e], done.stdout
    assert any("shots_str.py" in e and '"shots"' in e for e in errors), done.stdout
    assert any("finetune_path.py" in e and '"finetune"' in e for e in errors), done.stdout


def test_every_config_field_on_the_api_page_has_its_help():
    """The API page's tables (tools/mkdocs_options.py, run by `mkdocs build`) stop on a field without help."""
    pytest.importorskip("mkdocs")
    import importlib.util

    spec = importlib.util.spec_from_file_location("mkdocs_options", ROOT / "tools" / "mkdocs_options.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (ROOT / "docs" / "api.md").read_text()
    markers = list(hook.MARKER.finditer(page))
    assert len(markers) >= 5
    for m in markers:
        table = hook.options_table(m["cls"], m["command"])
        module, name = m["cls"].rsplit(".", 1)
        import dataclasses
        import importlib

        fields = dataclasses.fields(getattr(importlib.import_module(module), name))
        assert len(table.splitlines()) == 2 + len(fields)  # a row per field, each with its help
