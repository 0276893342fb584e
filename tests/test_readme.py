"""The README is the newcomer's contract: its commands are what CI runs (tests/test_docs.py runs its code blocks)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def _block_after(heading: str) -> list[str]:
    """The lines of the first bash block of the section ``heading``."""
    assert f"## {heading}\n" in README, f"README.md must have a {heading!r} section"
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"README.md must have a '{heading}' section with a bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_has_main_and_test_command():
    cmds = _block_after("Quick start")
    assert len(cmds) == 2
    assert "fdalign demo" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    install, test = (part.strip() for part in _block_after("Quick start")[1].split("&&"))
    lines = [line.strip() for line in CI.splitlines()]
    assert install in lines, CI  # each run as a command of its own, with exactly the README's flags
    assert any(line == test or line.startswith(test + " ||") for line in lines), CI


def test_ci_runs_the_readme_checks_exactly():
    (checks,) = _block_after("Checks")
    for tool in ("ruff check", "ruff format --check", "mypy", "mkdocs build --strict"):
        assert tool in checks
    assert checks in CI.splitlines(), ".ci/run must run README's Checks line as it is written"


def test_readme_is_short():
    assert len(README.splitlines()) <= 200, "README.md routes to docs/: move the details there"
