"""`fdalign sweep`: a grid on rendered world data, killed during its third run, resumed without redoing
finished runs; failures recorded; settings precedence; refusing to mix settings."""

from __future__ import annotations

import json

import pytest
import yaml

from fdalign.cli import main
from fdalign.errors import FDAlignError
from fdalign.experiments import sweep as sw

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # before the module-scoped sweeps

CLASSES = ["circle", "square", "star"]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the sweep or the train CLI catches it."""


def sweep_dict(tiny, **kw) -> dict:
    d = {
        "name": "tiny",
        "world": {
            "id_styles": ["photo"],
            "ood_styles": ["sketch"],
            "train_per_class": 3,
            "val_per_class": 2,
            "test_per_class": 2,
            "image_size": 32,
            "classes": CLASSES,
        },
        "datasets": [{"name": "w", "data": "{data_root}", "ood": "world"}],
        "shots": [1, 2],
        "seeds": [1, 2],
        "train": {
            "model": "tiny",
            "pretrained": str(tiny["checkpoint"]),
            "model_config": str(tiny["config"]),
            "epochs": 2,
            "batch_size": 4,
            "num_workers": 0,
            "templates": "tip7",
            "spc": False,
            "device": "cpu",
            "tensorboard": False,
            "lr": 1e-3,
            "wiseft_alphas": [0.0, 0.5, 1.0],
            "eval_batch_size": 64,
        },
        "methods": {"fine-tune": {"beta": 0.0}, "fd-align": {"beta": 1.0}},
    }
    d.update(kw)
    return d


def write_config(path, d):
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_openclip, tmp_path_factory):
    """The done-when scenario: 2 methods x 2 seeds x 2 shots, killed in run 3's second epoch, resumed."""
    import fdalign.train.trainer as trainer

    root = tmp_path_factory.mktemp("sweep")
    cfg_path = write_config(root / "grid.yaml", sweep_dict(tiny_openclip))
    out = root / "out"
    original = trainer.train
    calls: list[dict] = []
    kill_at = {"call": 3}

    def spy(backend, train_set, val_set, prototypes, config, run_dir, progress=True, on_epoch_end=None, **kw):
        calls.append({"run_dir": str(run_dir), "epochs": []})

        def hook(epoch, top1):
            calls[-1]["epochs"].append(epoch)
            if len(calls) == kill_at["call"] and epoch == 1:
                raise Killed  # after epoch 1's checkpoint: a run killed midway

        return original(backend, train_set, val_set, prototypes, config, run_dir, progress, hook, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "train", spy)
    mp.setenv("FDALIGN_CACHE", str(root / "cache"))
    try:
        with pytest.raises(Killed):
            main(["sweep", str(cfg_path), "--out", str(out), "--no-progress"])
        first = [dict(c) for c in calls]
        runs = sw.plan_runs(sw.load_sweep_config(str(cfg_path)))
        states = [sw.run_state(r.dir(out)) for r in runs]
        mtimes = {r.key: (r.dir(out) / "metrics.json").stat().st_mtime_ns for r in runs[:2]}
        calls.clear()
        kill_at["call"] = -1
        assert main(["sweep", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    finally:
        mp.undo()
    return {
        "out": out,
        "runs": runs,
        "first": first,
        "second": list(calls),
        "states_after_kill": states,
        "mtimes": mtimes,
        "config": cfg_path,
    }


def test_kill_during_third_run_then_resume_redoes_nothing(killed_and_resumed):
    k = killed_and_resumed
    out, runs = k["out"], k["runs"]
    assert len(runs) == 8
    assert k["states_after_kill"] == ["done", "done", "running"] + ["new"] * 5
    assert len(k["first"]) == 3 and k["first"][2]["epochs"] == [1]
    # the second invocation trained only runs 3..8, and run 3 continued at epoch 2
    second = k["second"]
    assert [c["run_dir"] for c in second] == [str(r.dir(out).absolute()) for r in runs[2:]]
    assert second[0]["epochs"] == [2] and all(c["epochs"] == [1, 2] for c in second[1:])
    for r in runs[:2]:
        assert (r.dir(out) / "metrics.json").stat().st_mtime_ns == k["mtimes"][r.key]
    third = json.loads((runs[2].dir(out) / sw.STATUS_FILE).read_text())
    assert third["state"] == "done" and third["resumed"] is True
    # the resumed run's log holds each step once (the trainer drops rows after the checkpoint)
    steps = [int(line.split(",")[0]) for line in (runs[2].dir(out) / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(steps) + 1))
    index = json.loads((out / "sweep.json").read_text())
    assert [r["state"] for r in index["runs"]] == ["done"] * 8


def test_third_invocation_runs_nothing(killed_and_resumed, capsys):
    k = killed_and_resumed
    before = {r.key: (r.dir(k["out"]) / "metrics.json").stat().st_mtime_ns for r in k["runs"]}
    assert main(["sweep", str(k["config"]), "--out", str(k["out"]), "--no-progress"]) == 0
    assert "8 of 8 runs already done" in capsys.readouterr().out
    assert main(["sweep", str(k["config"]), "--out", str(k["out"]), "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[:8] == [f"{'done':>11}  {r.key}" for r in k["runs"]] and listed[8] == "8 runs"
    assert before == {r.key: (r.dir(k["out"]) / "metrics.json").stat().st_mtime_ns for r in k["runs"]}


def test_run_request_is_a_plain_train_config(killed_and_resumed):
    from fdalign.train.config import TrainConfig

    k = killed_and_resumed
    r = k["runs"][5]  # w/k2/s1/fd-align
    cfg = TrainConfig.from_yaml(r.dir(k["out"]) / sw.REQUEST_FILE)
    assert (cfg.shots, cfg.seed, cfg.beta, cfg.epochs) == (2, 1, 1.0, 2)
    assert cfg.data == str((k["out"] / "world").absolute())
    assert cfg.ood == [f"sketch={k['out'] / 'world' / 'ood' / 'sketch'}"]


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tiny_openclip, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
    d = sweep_dict(tiny_openclip, shots=[1], seeds=[1], methods={"fine-tune": {"beta": 0.0}})
    d["datasets"] = [
        {"name": "missing", "data": str(tmp_path / "nowhere")},
        {"name": "w", "data": "{data_root}", "ood": "world"},
    ]
    d["train"]["epochs"] = 1
    cfg = write_config(tmp_path / "g.yaml", d)
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    index = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert [r["state"] for r in index["runs"]] == ["failed", "done"]
    assert "nowhere" in index["runs"][0]["error"] and "does not exist" in index["runs"][0]["error"]
    assert "failed" in capsys.readouterr().out


def test_settings_precedence_released_preset(tmp_path):
    """released LR table < train block < data set block < method; the grid sets shots/seed/data."""
    d = {
        "name": "p",
        "preset": "released",
        "datasets": [{"name": "eurosat", "data": "{data_root}/eurosat", "train": {"epochs": 7, "beta": 5.0}}],
        "shots": [4],
        "seeds": [3],
        "train": {"epochs": 5, "beta": 2.0},
        "methods": {"fine-tune": {"beta": 0.0}, "fd-align": {}, "lp": {"mode": "linear-probe"}},
    }
    cfg = sw.SweepConfig.from_dict(d)
    runs = sw.plan_runs(cfg)
    c = {r.method: sw.run_config(cfg, r, tmp_path / "o", data_root="/data") for r in runs}
    # REFERENCE.md: eurosat 4-shot full LR 3e-4, head LR 80 (per 256 images)
    assert c["fd-align"].lr == pytest.approx(3e-4) and c["lp"].lp_lr == pytest.approx(80)
    assert c["fd-align"].optimizer == "sgd" and c["fd-align"].lr_per_256
    assert c["fd-align"].epochs == 7 and c["fd-align"].beta == 5.0 and c["fine-tune"].beta == 0.0
    assert c["lp"].weight_decay == pytest.approx(5e-4)  # the released recipe where nothing overrides it
    assert c["lp"].mode == "linear-probe" and (c["lp"].shots, c["lp"].seed) == (4, 3)
    assert c["fd-align"].data == "/data/eurosat" and c["fd-align"].out.endswith("runs/eurosat/k4/s3/fd-align")


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(methods={"fd-align": {"shots": 4}}), ["methods.fd-align", "shots", "grid"]),
        (dict(methods={"fd-align": {"betta": 1}}), ["unknown option 'betta'", "beta"]),
        (dict(shots="many"), ["shots", "integers"]),
        (dict(wiseft=["lp"]), ["wiseft", "lp"]),
        (dict(colour="red"), ["unknown key 'colour'"]),
        (dict(datasets=[{"name": "a/b", "data": "x"}]), ["a/b", "run folder"]),
    ],
)
def test_bad_configs_are_user_errors(change, words, tmp_path):
    d = {
        "name": "b",
        "datasets": [{"name": "d", "data": str(tmp_path)}],
        "shots": [1],
        "seeds": [1],
        "methods": {"fd-align": {"beta": 1.0}},
    }
    d.update(change)
    with pytest.raises(FDAlignError) as e:
        cfg = sw.SweepConfig.from_dict(d)
        for r in sw.plan_runs(cfg):
            sw.run_config(cfg, r, tmp_path / "o")
    assert all(w in str(e.value) for w in words), str(e.value)


def test_changed_settings_for_an_existing_run_are_refused(killed_and_resumed, tmp_path):
    k = killed_and_resumed
    d = yaml.safe_load(k["config"].read_text())
    d["methods"]["fd-align"]["beta"] = 3.0
    cfg = write_config(tmp_path / "changed.yaml", d)
    assert main(["sweep", str(cfg), "--out", str(k["out"]), "--no-progress"]) == 2


def test_a_run_recorded_before_a_field_existed_is_read_with_its_default(killed_and_resumed, tmp_path, capsys):
    """A run made by an older fdalign (no ``trainable`` in its request) is the same request when the
    field's default is asked for, and another request when a non-default value is."""
    k = killed_and_resumed
    req = k["runs"][0].dir(k["out"]) / sw.REQUEST_FILE
    text = req.read_text()
    d = yaml.safe_load(text)
    assert d.pop("trainable") == "full"
    req.write_text(yaml.safe_dump(d))
    try:
        capsys.readouterr()
        assert main(["sweep", str(k["config"]), "--out", str(k["out"]), "--no-progress"]) == 0
        assert "8 of 8 runs already done" in capsys.readouterr().out
        changed = yaml.safe_load(k["config"].read_text())
        changed["methods"]["fd-align"]["trainable"] = "bias"
        cfg = write_config(tmp_path / "bias.yaml", changed)
        assert main(["sweep", str(cfg), "--out", str(k["out"]), "--no-progress", "--dry-run"]) == 2
        assert "trainable" in capsys.readouterr().err
    finally:
        req.write_text(text)


def test_shipped_presets_parse_and_plan():
    assert {"demo", "imagenet", "coop", "spc-ablation"} <= set(sw.preset_names())
    coop = sw.load_sweep_config("coop")
    assert len(coop.datasets) == 11 and coop.shots == [1, 2, 4, 8, 16] and coop.seeds == [1, 2, 3]
    runs = {r.key: r for r in sw.plan_runs(coop)}
    assert len(runs) == 11 * 5 * 3 * 2
    # the authors' per-data-set LRs (REFERENCE.md), per 256 images
    for key, lr in (
        ("sun397/k2/s1/fd-align", 8e-5),
        ("caltech101/k16/s3/fine-tune", 5e-4),
        ("eurosat/k4/s2/fd-align", 3e-4),
        ("imagenet/k1/s1/fd-align", 5e-5),
    ):
        c = sw.run_config(coop, runs[key], "/tmp/o", data_root="/data")
        assert c.lr == pytest.approx(lr) and c.lr_per_256, key
    assert runs["sun397/k2/s1/fd-align"].dir("/o").as_posix() == "/o/runs/sun397/k2/s1/fd-align"
    spc = sw.load_sweep_config("spc-ablation")
    assert set(spc.methods) >= {"openai80", "tip7", "spc"}
    imagenet = sw.load_sweep_config("imagenet")
    ood = sw.run_config(imagenet, sw.plan_runs(imagenet)[0], "/tmp/o", data_root="/data").ood
    assert [o.split("=")[0] for o in ood] == ["imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"]
    assert sw.load_sweep_config("demo").world["id_styles"] == ["jpeg corrupted"]


def test_real_sigkill_during_third_run_then_resume(tiny_openclip, tmp_path):
    """The same with a real process and SIGKILL: nothing in Python gets to clean up. The third run waits
    at its first training step (tests/_gate.py) until the kill, whatever the machine's load."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import _gate

    d = sweep_dict(tiny_openclip, shots=[1])
    cfg_path = write_config(tmp_path / "g.yaml", d)
    out, gate = tmp_path / "out", tmp_path / "gate"
    runs = sw.plan_runs(sw.SweepConfig.from_dict(d))
    env = dict(
        os.environ,
        FDALIGN_CACHE=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(
            [str(Path(sw.__file__).parents[2]), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    )
    args = ["sweep", str(cfg_path), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(_gate.command(gate, 2, args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _gate.wait_until(lambda: _gate.waiting(gate) == 1, proc, "the third run reached its first step")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    cmd = [sys.executable, "-m", "fdalign", *args]
    assert [sw.run_state(r.dir(out)) for r in runs] == ["done", "done", "running", "new"]
    mtimes = [(r.dir(out) / "metrics.json").stat().st_mtime_ns for r in runs[:2]]
    assert subprocess.run(cmd, env=env, capture_output=True, text=True).returncode == 0
    assert [sw.run_state(r.dir(out)) for r in runs] == ["done"] * 4
    assert [(r.dir(out) / "metrics.json").stat().st_mtime_ns for r in runs[:2]] == mtimes
