"""A sweep whose cells wait at a gate: the first ``n`` cells to reach their first training step train on,
every later one writes ``GATE/waiting-<pid>-<n>`` there and waits for a signal (Ctrl-C or SIGKILL).

A test that interrupts or kills a sweep "while a cell trains" then waits for these files, not for the
clock: on a loaded machine every cell would otherwise finish before the signal arrives.

    python -c "import _gate, sys; sys.exit(_gate.main())" GATE N sweep CONFIG --out OUT ...

(tests/ on PYTHONPATH; ``-c``, not ``-m``, so that spawned workers can import this module by its name
and unpickle :func:`gated_run_cell`.)
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from pathlib import Path

GATE_ENV = "FDALIGN_TEST_GATE"  # "GATE_DIR:N", inherited by the sweep's spawned workers
MAX_WAIT_S = 600  # a safety bound only: the test signals the cell long before, or has failed anyway


def _passes(gate: Path, n: int) -> bool:
    """Whether this cell is one of the first ``n`` through the gate (O_EXCL: one winner per ticket)."""
    for i in range(n):
        try:
            os.close(os.open(gate / f"pass-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            continue
    return False


_waits = itertools.count()


def _wait_for_a_signal(gate: Path) -> None:
    (gate / f"waiting-{os.getpid()}-{next(_waits)}").touch()
    deadline = time.monotonic() + MAX_WAIT_S
    while time.monotonic() < deadline:  # the signal's KeyboardInterrupt (or SIGKILL) ends this wait
        time.sleep(0.05)
    raise RuntimeError(f"no signal reached the gated cell in {MAX_WAIT_S} s")


def gated_run_cell(cell):
    """:func:`fdalign.experiments.sweep.run_cell` with the gate before the cell's first training step."""
    import fdalign.train.trainer as trainer
    from fdalign.experiments import sweep

    gate_dir, n = os.environ[GATE_ENV].rsplit(":", 1)
    forward, checked = trainer.fdalign_forward, []

    def gated_forward(*a, **kw):
        if not checked:
            checked.append(True)
            if not _passes(Path(gate_dir), int(n)):
                _wait_for_a_signal(Path(gate_dir))
        return forward(*a, **kw)

    trainer.fdalign_forward = gated_forward
    try:
        return getattr(sweep, "_real_run_cell", sweep.run_cell)(cell)  # a spawned worker has the real one
    finally:
        trainer.fdalign_forward = forward


def install() -> None:
    """Route this process's sweeps (and, pickled by name, its workers' cells) through the gate."""
    from fdalign.experiments import sweep

    if not hasattr(sweep, "_real_run_cell"):
        sweep._real_run_cell = sweep.run_cell
        sweep.run_cell = gated_run_cell


def main(argv: list[str] | None = None) -> int:
    """``GATE N fdalign-args...``: the CLI with the gate installed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    gate, n = Path(argv.pop(0)), int(argv.pop(0))
    gate.mkdir(parents=True, exist_ok=True)
    # a terminal's Ctrl-C, even when the test runner was started with SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ[GATE_ENV] = f"{gate}:{n}"
    install()
    from fdalign.cli import main as cli

    return cli(argv)


def waiting(gate: Path) -> int:
    """How many cells wait at the gate now."""
    return len(list(gate.glob("waiting-*"))) if gate.is_dir() else 0


def command(gate: Path, n: int, args: list[str]) -> list[str]:
    return [sys.executable, "-c", "import _gate, sys; sys.exit(_gate.main())", str(gate), str(n), *args]


def wait_until(condition, proc, what: str, limit_s: float = 600) -> None:
    """Poll ``condition()`` until true; fail at once if ``proc`` ended first (a bound, not a race: the
    cells wait at the gate until the test acts)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) before {what}: {proc.communicate()[0]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened in {limit_s} s")
        time.sleep(0.02)
