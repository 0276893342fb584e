"""``fdalign.export`` and ``fdalign.predict`` (also named ``export_run`` / ``predict_images``): a finished run
as a checkpoint, or its predictions."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fdalign.errors import FDAlignError

if TYPE_CHECKING:
    from fdalign.exporting import ExportResult
    from fdalign.prediction import Predictions
    from fdalign.workflows.kshot import Run


def export_run(
    run: str | os.PathLike[str] | Run,
    format: str,
    out: str | os.PathLike[str],
    *,
    wiseft_alpha: float | str | None = "selected",
    force: bool = False,
    verify: bool = True,
    adapter_only: bool = False,
) -> ExportResult:
    """``fdalign export RUN --format FORMAT --out OUT``: returns the :class:`fdalign.exporting.ExportResult`.

    ``run``: a run directory or a :class:`~fdalign.workflows.kshot.Run`; ``format``: open_clip or hf;
    ``wiseft_alpha``: ``"selected"`` (the model val chose, as ``run.encoder``), ``"fine-tuned"`` / None
    (the fine-tuned weights) or a number in [0, 1]; ``adapter_only``: also write a LoRA run's adapter in
    peft's format (``OUT/adapter``).
    """
    from fdalign.exporting import export_run as _export

    return _export(
        _run_dir(run), format, out, wiseft_alpha=wiseft_alpha, force=force, verify=verify, adapter_only=adapter_only
    )


def predict_images(
    target: str | os.PathLike[str] | Run,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] | None = None,
    topk: int = 5,
    wiseft_alpha: float | str | None = "selected",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = False,
) -> Predictions:
    """``fdalign predict TARGET IMAGES...``: the :class:`~fdalign.prediction.Predictions` (with
    ``classnames`` and ``classifier``); the CSV is written to ``out`` if given.

    ``target``: a run directory, a :class:`~fdalign.workflows.kshot.Run` or an export folder;
    ``images``: one path or a list of paths; a folder is walked (recursively) only when a folder is given;
    ``wiseft_alpha`` (a run): ``"selected"`` (the model val chose), ``"fine-tuned"`` or a number in [0, 1].
    """
    from fdalign.io import atomic_write_text
    from fdalign.prediction import collect_images, load_classifier, predict, predictions_csv, target_kind
    from fdalign.train.trainer import resolve_device

    target = _run_dir(target)
    if batch_size < 1:
        raise FDAlignError(f"--batch-size must be >= 1 (got {batch_size})")
    if topk < 1:
        raise FDAlignError(f"--topk must be >= 1 (got {topk})")
    target_kind(target, wiseft_alpha)  # a wrong target fails before any folder is walked
    if out is not None:
        _check_csv_out(out)  # before inference, not after it
    if isinstance(images, (str, os.PathLike)):  # one path, not a sequence of characters
        images = [images]
    names = [str(i) for i in images]
    paths, missing = collect_images(names)
    if len(paths) == len(missing):
        raise FDAlignError(
            f"no image files found in {' '.join(names)}"
            + (f" ({len(missing)} path(s) do not exist)" if missing else "")
        )
    dev = resolve_device(device)
    clf = load_classifier(target, wiseft_alpha, dev)
    pred = predict(
        clf,
        paths,
        topk=topk,
        batch_size=batch_size,
        device=dev,
        num_workers=num_workers,
        precision=precision,
        progress=progress and sys.stderr.isatty(),
    )
    pred.classnames, pred.classifier = list(clf.classnames), clf
    if out is not None:
        atomic_write_text(out, predictions_csv(pred, clf.classnames))
    return pred


def _check_csv_out(out) -> None:
    from pathlib import Path

    out = Path(out)
    if out.is_dir():
        raise FDAlignError(
            f"--out {out} is a directory; give the CSV file to write, e.g. --out {out / 'predictions.csv'}"
        )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FDAlignError(f"--out {out}: {parent} is a file, not a folder; give a CSV path in a folder")


def _run_dir(run) -> str:
    return str(getattr(run, "out", run))


export = export_run  # fdalign.export(run, format, out)
predict = predict_images  # fdalign.predict(run_or_export, images, out=...)
