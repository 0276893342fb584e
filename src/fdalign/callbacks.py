"""Callbacks: your code, called by the one training loop (``fdalign.finetune(config, callbacks=[...])``).

A callback is any object with some of these methods (each one optional):

- ``on_step(metrics)`` after every optimiser step: ``{"step", "epoch", "lr", "ce", "kl", "loss",
  "images_per_s"}`` (the row ``log.csv`` gets);
- ``on_epoch_end(metrics)`` after each epoch's validation and checkpoint: ``{"epoch", "epochs",
  "phase", "val_top1", "best_val_top1", "best_epoch", "step"}``;
- ``on_end(run)`` once the run is evaluated and written: the :class:`fdalign.Run`.

The loggers of :mod:`fdalign.loggers` (TensorBoard, Weights & Biases, MLflow) are callbacks too. An
exception raised by a callback stops the run (a Ctrl-C-like stop stays resumable from the last
checkpoint). Torch-free: ``fdalign --help`` may import it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Protocol

HOOKS = ("on_step", "on_epoch_end", "on_end")


class Callback(Protocol):
    """The hooks a callback may define (all optional; see the module docstring for the metrics)."""

    def on_step(self, metrics: dict[str, Any]) -> None: ...

    def on_epoch_end(self, metrics: dict[str, Any]) -> None: ...

    def on_end(self, run: Any) -> None: ...


class CallbackList:
    """Calls each hook on every callback that defines it, in order; ``close()`` closes those with one."""

    def __init__(self, callbacks: Iterable[Any] = ()):
        self.callbacks = list(callbacks.callbacks if isinstance(callbacks, CallbackList) else callbacks)
        for cb in self.callbacks:
            if not any(callable(getattr(cb, h, None)) for h in HOOKS):
                from fdalign.errors import FDAlignError

                raise FDAlignError(
                    f"callback {cb!r} has none of {', '.join(HOOKS)}; give an object with at least one of them"
                )

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def _call(self, hook: str, arg) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if callable(fn):
                fn(dict(arg) if isinstance(arg, dict) else arg)  # a copy: one callback cannot change another's

    def on_step(self, metrics: dict) -> None:
        self._call("on_step", metrics)

    def on_epoch_end(self, metrics: dict) -> None:
        self._call("on_epoch_end", metrics)

    def on_end(self, run) -> None:
        self._call("on_end", run)

    def close(self) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, "close", None)
            if callable(fn):
                fn()


class ProgressLines:
    """One line per epoch on stderr, for logs that are no terminal (files, nohup, Slurm, notebooks),
    where progress bars would print nothing or garbage."""

    def __init__(self, stream=None, prefix: str = "fdalign train"):
        self.stream, self.prefix = stream, prefix

    def on_epoch_end(self, m: dict) -> None:
        best = "  (best)" if m.get("best_epoch") == m["epoch"] else ""
        print(
            f"{self.prefix}: epoch {m['epoch']}/{m['epochs']} ({m['phase']}): val top-1 {m['val_top1']:.2f}%{best}",
            file=self.stream or sys.stderr,
            flush=True,
        )


def set_line(prefix: str, stream=None):
    """``on_set(name, {row: scores})`` for :func:`fdalign.eval.run_evaluation`: one line per evaluated set."""

    def on_set(name: str, rows: dict) -> None:
        n = next((r.get("n") for r in rows.values() if isinstance(r, dict)), None)
        said = ", ".join(f"{row} {r['top1']:.2f}%" for row, r in rows.items() if isinstance(r, dict) and "top1" in r)
        size = f" ({n} images)" if n is not None else ""
        print(f"{prefix}: evaluated {name}{size}: top-1 {said}", file=stream or sys.stderr, flush=True)

    return on_set


__all__ = ["Callback", "CallbackList", "ProgressLines", "HOOKS", "set_line"]
