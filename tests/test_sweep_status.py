"""The sweep's bookkeeping tells the truth: `--dry-run` shows what the real run would refuse and
catches typo'd options; one damaged status.json fails only its own run; sweep.json never says
"new" for a run that was started and interrupted."""

from __future__ import annotations

import json

import pytest
import yaml

from _synth import make_imagefolder
from fdalign.cli import main
from fdalign.experiments import sweep as sw

pytestmark = pytest.mark.usefixtures("cli_env")


def _grid(tiny, data, **train) -> dict:
    return {
        "name": "g",
        "datasets": [{"name": "w", "data": str(data)}],
        "shots": [1],
        "seeds": [1, 2],
        "train": {
            "model": "tiny",
            "pretrained": str(tiny["checkpoint"]),
            "model_config": str(tiny["config"]),
            "epochs": 1,
            "num_workers": 0,
            "templates": "tip7",
            "spc": False,
            "device": "cpu",
            **train,
        },
        "methods": {"fine-tune": {"beta": 0.0}},
    }


def _write(path, d):
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return str(path)


def _done_cells(cfg_dict, out):
    """Every cell as a finished run would leave it (request.yaml, status.json, metrics.json), without training."""
    cfg = sw.SweepConfig.from_dict(cfg_dict)
    for r in sw.plan_runs(cfg):
        d = r.dir(out)
        d.mkdir(parents=True)
        sw.run_config(cfg, r, out).to_yaml(d / sw.REQUEST_FILE)
        (d / "status.json").write_text(json.dumps({"run": r.to_json(), "state": "done"}))
        (d / "metrics.json").write_text("{}")


@pytest.fixture
def data(tmp_path):
    return make_imagefolder(tmp_path / "data", ["red", "blue"], n_train=2, n_test=1, n_val=1)


def test_dry_run_shows_the_runs_the_real_run_would_refuse(tiny_openclip, data, tmp_path, capsys):
    """Before: `--dry-run` listed both runs as `done`; the real run then stopped on changed settings."""
    out = tmp_path / "out"
    _done_cells(_grid(tiny_openclip, data, lr=1e-3), out)
    changed = _write(tmp_path / "changed.yaml", _grid(tiny_openclip, data, lr=3e-3))
    assert main(["sweep", changed, "--out", str(out), "--dry-run"]) == 2
    std = capsys.readouterr()
    assert "    refused  w/k1/s1/fine-tune" in std.out and "    refused  w/k1/s2/fine-tune" in std.out
    assert "2 run(s) would be refused" in std.err and "lr differ" in std.err
    assert main(["sweep", changed, "--out", str(out), "--no-progress"]) == 2  # the real run: the same verdict
    assert "lr differ" in capsys.readouterr().err
    same = _write(tmp_path / "same.yaml", _grid(tiny_openclip, data, lr=1e-3))
    assert main(["sweep", same, "--out", str(out), "--dry-run"]) == 0
    assert "       done  w/k1/s2/fine-tune" in capsys.readouterr().out


@pytest.mark.parametrize("block", ["train", "method"])
def test_dry_run_catches_a_typo_in_an_option(tiny_openclip, data, tmp_path, capsys, block):
    """A sweep that renders its world first: before, `--dry-run` listed every run as `new` and the typo
    surfaced only after the render. The runs' settings cannot be built without the world, the keys can."""
    d = _grid(tiny_openclip, "{data_root}")
    d["world"] = {
        "id_styles": ["photo"],
        "ood_styles": ["sketch"],
        "train_per_class": 2,
        "val_per_class": 1,
        "test_per_class": 1,
        "image_size": 32,
        "classes": ["circle", "square"],
    }
    d["datasets"][0]["ood"] = "world"
    if block == "train":
        d["train"]["epohcs"] = 2
    else:
        d["methods"]["fine-tune"]["bta"] = 0.0
    assert main(["sweep", _write(tmp_path / "typo.yaml", d), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert (
        ("unknown option 'epohcs' (did you mean 'epochs'?)" in err and ": train:" in err)
        if block == "train"
        else ("unknown option 'bta' (did you mean 'beta'?)" in err and "methods.fine-tune" in err)
    )
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00", b"[1, 2]", b'{"state": '])
def test_one_damaged_status_json_fails_only_its_run(tiny_openclip, data, tmp_path, capsys, damage):
    """Before: one bad status.json stopped the whole sweep (a traceback, or exit 2 for every run)."""
    d = _grid(tiny_openclip, data)
    out = tmp_path / "out"
    _done_cells(d, out)
    bad = out / "runs/w/k1/s2/fine-tune/status.json"
    bad.write_bytes(damage)
    cfg = _write(tmp_path / "g.yaml", d)
    assert main(["sweep", cfg, "--out", str(out), "--dry-run"]) == 0
    assert "    damaged  w/k1/s2/fine-tune" in capsys.readouterr().out
    assert main(["sweep", cfg, "--out", str(out), "--no-progress"]) == 1
    std = capsys.readouterr()
    assert "Traceback" not in std.err
    assert f"w/k1/s2/fine-tune: not run: run status {bad}" in std.out and "delete the run folder" in std.out
    assert "1 already done, 1 failed" in std.out
    index = {r["key"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert index["w/k1/s1/fine-tune"]["state"] == "done"
    assert index["w/k1/s2/fine-tune"]["state"] == "damaged" and str(bad) in index["w/k1/s2/fine-tune"]["error"]
    assert bad.read_bytes() == damage  # evidence kept: nothing overwrote it


def test_sweep_json_says_what_an_interrupted_run_is(tiny_openclip, data, tmp_path, monkeypatch):
    """Before: Ctrl-C in a run left sweep.json saying "new" for it while its status.json said otherwise."""
    import fdalign.train.trainer as trainer

    def ctrl_c(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", ctrl_c)
    d = _grid(tiny_openclip, data)
    d["seeds"] = [1]
    out = tmp_path / "out"
    assert main(["sweep", _write(tmp_path / "g.yaml", d), "--out", str(out), "--no-progress"]) == 130
    (run,) = json.loads((out / "sweep.json").read_text())["runs"]
    status = json.loads((out / "runs/w/k1/s1/fine-tune/status.json").read_text())
    assert run["state"] == status["state"] and run["state"] in ("interrupted", "running")
