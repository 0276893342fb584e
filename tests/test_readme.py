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
    lines = [line.strip() for line in ci.splitlines()]
    assert install in lines, ci  # each run as a command of its own, with exactly the README's flags
    assert any(line == test or line.startswith(test + " ||") for line in lines), ci


def _python_api_snippets() -> list[str]:
    section = README.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_python_api_finetune_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippet writes world/ and runs/ where it is run
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
    code = _python_api_snippets()[0]
    scope: dict = {}
    exec(compile(code, "README.md (Python API, 1)", "exec"), scope)
    run = scope["run"]
    import json

    written = json.loads((tmp_path / "runs" / "world-2shot" / "metrics.json").read_text())
    assert written["metrics"]["test"]["fine-tuned"]["top1"] == run.metrics["test"]["fine-tuned"]["top1"]
    assert set(run.metrics) == {"test", "sketch"} and run.paths["model"].is_file()


def test_python_api_loss_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
    code = _python_api_snippets()[1]
    scope: dict = {}
    exec(compile(code, "README.md (Python API, 2)", "exec"), scope)
    loss, loss_fn, clip = scope["loss"], scope["loss_fn"], scope["clip"]
    assert loss.ndim == 0 and bool(loss.isfinite())
    # the backward pass reaches the trainable encoder, and f0 is a real frozen copy: with ft used
    # twice the KL would stay exactly zero after ft has moved
    assert any(p.grad is not None for p in clip.image_encoder.parameters())
    assert loss_fn.f0 is not clip.image_encoder and not any(p.requires_grad for p in loss_fn.f0.parameters())
    assert scope["parts"]["kl"].item() > 0
