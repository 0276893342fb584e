"""Every method of issue 27 through the one loop (train/methods.py, train/step.py): each trains and evaluates,
and each step's loss is the method's formula, computed here independently."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import fdalign
from fdalign.train.methods import method_spec
from test_cli_train import folders  # noqa: F401 (the generated ID / OOD folders and templates)

pytestmark = pytest.mark.usefixtures("cli_env")


def _config(tiny, data, out, **kw):
    d = dict(
        model_config=str(tiny["config"]),
        pretrained=str(tiny["checkpoint"]),
        data=str(data["id"]),
        ood=[f"ood={data['ood']}"],
        shots=2,
        epochs=1,
        batch_size=3,
        num_workers=0,
        templates=str(data["templates"]),
        spc_keep=3,
        spc_k=2,
        wiseft_alphas=[0.0, 0.5, 1.0],
        device="cpu",
        lr=1e-3,
        beta=1.0,
        progress=False,
        tensorboard=False,
        out=str(out),
    )
    d.update(kw)
    return fdalign.TrainConfig(**d)


def _log(out):
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "method, extra",
    [
        ("fine-tune", {}),
        ("logit-kd", {}),
        ("feature-kd", {}),
        ("l2-sp", {}),
        ("flyp", {}),
        ("clip-lora", {}),
        ("fd-align", {"spurious": "shuffled"}),
        ("fd-align", {"spurious": "random"}),
    ],
)
def test_every_method_trains_and_reports(tiny_openclip, folders, tmp_path, method, extra):  # noqa: F811
    out = tmp_path / "run"
    run = fdalign.finetune(_config(tiny_openclip, folders, out, method=method, **extra))
    assert run.config.method == method
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test", "ood"} <= set(metrics["metrics"] if "metrics" in metrics else metrics)
    rows = _log(out)
    assert rows and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    reg = [float(r["kl"]) for r in rows]
    if method_spec(method).regulariser == "none" or method == "fine-tune":
        assert all(v == 0.0 for v in reg)
    elif method != "l2-sp":  # l2-sp is 0 at the first step by definition
        assert any(v > 0 for v in reg), reg
