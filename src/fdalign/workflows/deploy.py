"""``fdalign.export`` and ``fdalign.predict`` (also named ``export_run`` / ``predict_images``): a finished run
as a checkpoint, or its predictions."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from fdalign.errors import FDAlignError


def export_run(
    run, format: str, out, *, wiseft_alpha=None, force: bool = False, verify: bool = True, adapter_only: bool = False
):
    """``fdalign export RUN --format FORMAT --out OUT``: returns the :class:`fdalign.exporting.ExportResult`.

    ``run``: a run directory or a :class:`~fdalign.workflows.kshot.Run`; ``format``: open_clip or hf;
    ``adapter_only``: also write a LoRA run's adapter in peft's format (``OUT/adapter``).
    """
    from fdalign.exporting import export_run as _export

    return _export(
        _run_dir(run), format, out, wiseft_alpha=wiseft_alpha, force=force, verify=verify, adapter_only=adapter_only
    )


def predict_images(
    target,
    images: Sequence[str | os.PathLike],
    *,
    out=None,
    topk: int = 5,
    wiseft_alpha=None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = False,
):
    """``fdalign predict TARGET IMAGES...``: ``(predictions, classifier)``; the CSV is written to ``out`` if given.

    ``target``: a run directory, a :class:`~fdalign.workflows.kshot.Run` or an export folder;
    ``images``: files and folders (searched recursively).
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
    images = [str(i) for i in images]
    paths, missing = collect_images(images)
    if len(paths) == len(missing):
        raise FDAlignError(
            f"no image files found in {' '.join(images)}"
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
    if out is not None:
        atomic_write_text(out, predictions_csv(pred, clf.classnames))
    return pred, clf


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
