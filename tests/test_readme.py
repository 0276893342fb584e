"""The README is the newcomer's contract: its commands are what CI runs and its API example runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _quick_start_commands() -> list[str]:
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", README, re.S)
    assert block, "README.md must open with a 'Quick start' bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_has_main_and_test_command():
    cmds = _quick_start_commands()
    assert len(cmds) == 2
    assert "fdalign demo" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = (part.strip() for part in _quick_start_commands()[1].split("&&"))
    assert install in ci and test in ci


def test_python_api_example_runs():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    loss = scope["loss"]
    assert loss.ndim == 0 and bool(loss.isfinite())
    # the example's backward pass must reach the trainable encoder, and f0 must be a real frozen copy:
    # with ft used twice the KL would stay exactly zero after ft has moved
    assert any(p.grad is not None for p in scope["ft"].parameters())
    assert scope["f0"] is not scope["ft"] and not any(p.requires_grad for p in scope["f0"].parameters())
    assert scope["parts"]["kl"].item() > 0
