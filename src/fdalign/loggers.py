"""Experiment trackers as thin callbacks (:mod:`fdalign.callbacks`) through their own libraries.

``--logger tensorboard`` (``pip install 'fdalign[tensorboard]'``) writes ``<out>/tensorboard``;
``--logger wandb`` (``fdalign[wandb]``) logs to Weights & Biases (``WANDB_MODE=offline`` keeps it
on disk, under ``<out>/wandb``); ``--logger mlflow`` (``fdalign[mlflow]``) logs to MLflow at
``MLFLOW_TRACKING_URI``, or to the local store ``<out>/mlflow.db`` (SQLite) when that is unset. A logger whose
library is missing is an error before training, never a silent no-op.

Each logs the training rows (``train/ce``, ``train/kl``, ``train/loss``, ``train/lr``,
``train/images_per_s`` per step), ``val/top1`` per epoch, and the evaluated rows at the end
(``<set>/<row>/top1``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fdalign.errors import FDAlignError

LOGGERS = ("tensorboard", "wandb", "mlflow")
STEP_KEYS = ("lr", "ce", "kl", "loss", "images_per_s")


def _missing(name: str, package: str) -> FDAlignError:
    return FDAlignError(
        f"logger {name!r} needs the {package} package, which is not installed: pip install 'fdalign[{name}]' "
        f"(or drop {name} from the loggers)"
    )


def final_metrics(run) -> dict[str, float]:
    """``{"<set>/<row>/top1": value}`` of a finished :class:`fdalign.Run` (``run.metrics`` is ``{set: {row}}``)."""
    out = {}
    for set_name, rows in (getattr(run, "metrics", None) or {}).items():
        for row, m in rows.items():
            for k in ("top1", "top5"):
                if isinstance(m, dict) and k in m:
                    out[f"{set_name}/{row}/{k}"] = float(m[k])
    return out


class TensorBoardLogger:
    """``torch.utils.tensorboard.SummaryWriter`` into ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(str(log_dir))
        self.step = 0

    def on_step(self, m: dict) -> None:
        self.step = m["step"]
        for k in STEP_KEYS:
            self.writer.add_scalar(f"train/{k}", m[k], m["step"])

    def on_epoch_end(self, m: dict) -> None:
        self.writer.add_scalar("val/top1", m["val_top1"], m["epoch"])
        self.writer.flush()

    def on_end(self, run) -> None:
        for k, v in final_metrics(run).items():
            self.writer.add_scalar(k, v, self.step)
        self.close()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run (``wandb.init``); the mode (online / offline) is wandb's own setting."""

    def __init__(self, out: str | os.PathLike, config: dict | None = None, project: str | None = None):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project or os.environ.get("WANDB_PROJECT", "fdalign"),
            name=out.name,
            dir=str(out),
            config=config or {},
        )
        self.step = 0

    def on_step(self, m: dict) -> None:
        self.step = m["step"]
        self.run.log({f"train/{k}": m[k] for k in STEP_KEYS}, step=m["step"])

    def on_epoch_end(self, m: dict) -> None:
        self.run.log({"val/top1": m["val_top1"], "epoch": m["epoch"]}, step=m["step"])

    def on_end(self, run) -> None:
        for k, v in final_metrics(run).items():
            self.run.summary[k] = v
        self.close()

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MLflowLogger:
    """An MLflow run through ``MlflowClient`` (no global active run, so two runs in one process never mix)."""

    def __init__(self, out: str | os.PathLike, config: dict | None = None, experiment: str | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        out = Path(out)
        # MLflow 3 keeps its ./mlruns file store for reading only: a local run goes to a SQLite file
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "fdalign")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=out.name).info.run_id
        self.uri, self.step = uri, 0
        for k, v in (config or {}).items():
            self.client.log_param(self.run_id, k, str(v)[:500])

    def on_step(self, m: dict) -> None:
        self.step = m["step"]
        for k in STEP_KEYS:
            self.client.log_metric(self.run_id, f"train/{k}", float(m[k]), step=m["step"])

    def on_epoch_end(self, m: dict) -> None:
        self.client.log_metric(self.run_id, "val/top1", float(m["val_top1"]), step=m["epoch"])

    def on_end(self, run) -> None:
        for k, v in final_metrics(run).items():
            self.client.log_metric(self.run_id, k, v, step=self.step)
        self.close()

    def close(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None


PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_loggers(names) -> None:
    """Fail before training, naming the extra to install, when a logger is unknown or its library missing."""
    import importlib.util

    for n in names:
        if n not in LOGGERS:
            raise FDAlignError(f"unknown logger {n!r}; choose from {', '.join(LOGGERS)}")
        if importlib.util.find_spec(PACKAGES[n]) is None:
            raise _missing(n, PACKAGES[n])


def make_loggers(names, out: str | os.PathLike, config: dict | None = None) -> list[Any]:
    """The loggers named (``tensorboard``, ``wandb``, ``mlflow``) for the run at ``out``."""
    check_loggers(names)
    out = Path(out)
    made = []
    for n in dict.fromkeys(names):
        if n == "tensorboard":
            made.append(TensorBoardLogger(out / "tensorboard"))
        elif n == "wandb":
            made.append(WandbLogger(out, config))
        else:
            made.append(MLflowLogger(out, config))
    return made


__all__ = [
    "LOGGERS",
    "TensorBoardLogger",
    "WandbLogger",
    "MLflowLogger",
    "make_loggers",
    "check_loggers",
    "final_metrics",
]
