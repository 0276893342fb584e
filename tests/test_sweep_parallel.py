"""Sweeps on several workers, several processes and submitit: the same metrics as one worker, no cell
run twice, Ctrl-C and resume, the Slurm path (local executor) with a failed cell resubmitted, and the
zero-shot rows computed once per sweep by the feature cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fdalign.experiments import sweep as sw
from fdalign.experiments.launchers import LocalWorkers, SlurmOptions, Submitit
from test_sweep import CLASSES, sweep_dict

SRC = str(Path(sw.__file__).parents[2])
TESTS = str(Path(__file__).parent)  # tests/_gate.py and tests/_cells.py, for spawned processes


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # before the module-scoped sweeps


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fdalign.world.render import RenderConfig, render_world

    root = tmp_path_factory.mktemp("world") / "w"
    render_world(
        RenderConfig(
            id_styles=("photo",),
            ood_styles=("sketch",),
            train_per_class=3,
            val_per_class=2,
            test_per_class=2,
            image_size=32,
            classes=tuple(CLASSES),
            progress=False,
        ),
        root,
    )
    return root


def grid(tiny, world, **kw) -> dict:
    """test_sweep's grid on an already rendered world: 1 shot x 2 seeds x 2 methods, one epoch each."""
    d = sweep_dict(tiny, datasets=[{"name": "w", "data": str(world), "ood": "world"}], shots=[1], **kw)
    del d["world"]
    d["train"]["epochs"] = 1
    return d


def env(tmp_path) -> dict:
    return dict(
        os.environ,
        FDALIGN_CACHE=str(tmp_path / "pcache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")]),
    )


def results(out: Path, runs) -> dict:
    """Every run's metrics.json without what legitimately differs between two sweeps: paths, timings."""
    got = {}
    for r in runs:
        m = json.loads((r.dir(out) / "metrics.json").read_text())
        m.get("config", {}).pop("out", None)
        m.get("train", {}).pop("seconds", None)
        got[r.key] = m
    return got


def train_calls(run_dir: Path) -> int:
    """How many processes trained this cell: each writes one '$ fdalign train' line to its train.log."""
    log = run_dir / "train.log"
    return log.read_text().count("$ fdalign train --config") if log.is_file() else 0


@pytest.fixture(scope="module")
def one_worker(tiny_openclip, world, tmp_path_factory):
    """The reference: one worker, in this process, feature cache on, every frozen-encoder pass counted."""
    import fdalign.eval.features as F
    from fdalign.eval import featcache

    root = tmp_path_factory.mktemp("one")
    cfg = sw.SweepConfig.from_dict(grid(tiny_openclip, world))
    passes: dict[str, int] = {}
    original = F.extract_features

    def counting(encoder, dataset, *a, **kw):
        if featcache.is_frozen(encoder):  # the pretrained encoder: the zero-shot rows' features
            name = dataset.split.name
            passes[name] = passes.get(name, 0) + 1
        return original(encoder, dataset, *a, **kw)

    import fdalign.eval.pipeline as P  # the test / OOD sets' passes, every encoder of a run in one

    one_pass = P._one_pass

    def counting_pass(encoders, dataset, *a):
        for encoder in encoders:
            if featcache.is_frozen(encoder):
                passes[dataset.split.name] = passes.get(dataset.split.name, 0) + 1
        return one_pass(encoders, dataset, *a)

    F.extract_features, P._one_pass = counting, counting_pass
    try:
        res = sw.run_sweep(cfg, root / "out", progress=False, log=lambda m: None)
    finally:
        F.extract_features, P._one_pass = original, one_pass
    return {"cfg": cfg, "out": root / "out", "res": res, "passes": passes, "runs": sw.plan_runs(cfg)}


def test_two_workers_give_the_same_metrics_as_one(one_worker, tmp_path):
    cfg, runs = one_worker["cfg"], one_worker["runs"]
    assert one_worker["res"].failed == 0
    res = sw.run_sweep(cfg, tmp_path / "out", progress=False, log=lambda m: None, launcher=LocalWorkers(2, threads=1))
    assert res.failed == 0 and [r["state"] for r in res.runs] == ["done"] * 4
    assert results(tmp_path / "out", runs) == results(one_worker["out"], runs)
    workers = {json.loads((r.dir(tmp_path / "out") / "status.json").read_text())["worker"] for r in runs}
    assert len(workers) == 2, workers  # two processes did the work, neither this one
    assert all(not w.endswith(f":{os.getpid()}") for w in workers)
    cost = json.loads((tmp_path / "out" / "sweep.json").read_text())["cost"]
    assert set(cost["busy_seconds"]) == workers and cost["wall_seconds"] > 0
    # two workers starting together still pass the pretrained encoder over each test / OOD set once
    sets = ["test"] + [o.split("=")[0] for o in sw.run_config(cfg, runs[0], tmp_path).ood]
    assert {s: cost["cache"]["passes"].get(s) for s in sets} == {s: 1 for s in sets}, cost["cache"]


def test_zero_shot_rows_equal_a_fresh_evaluation_and_the_encoder_ran_once_per_set(one_worker, tmp_path):
    from fdalign.eval import featcache
    from fdalign.workflows import evaluate

    out, runs, cfg = one_worker["out"], one_worker["runs"], one_worker["cfg"]
    rc = sw.run_config(cfg, runs[0], out)
    ood_names = [o.split("=")[0] for o in rc.ood]
    # the test set and every OOD set went through the pretrained encoder once in the whole sweep (4 runs)
    assert {k: one_worker["passes"].get(k) for k in ["test", *ood_names]} == {"test": 1, **{n: 1 for n in ood_names}}
    with featcache.enabled(None):  # a fresh zero-shot evaluation, no cache
        fresh = evaluate(
            rc.model,
            data=rc.data,
            pretrained=rc.pretrained,
            model_config=rc.model_config,
            ood=rc.ood,
            templates=rc.templates,
            device="cpu",
            no_progress=True,
            out=str(tmp_path / "zs"),
        ).metrics
    for r in runs:
        m = json.loads((r.dir(out) / "metrics.json").read_text())["metrics"]
        for s in ["test", *ood_names]:
            assert m[s]["zero-shot"] == fresh[s]["zero-shot"], (r.key, s)
    cost = json.loads((out / "sweep.json").read_text())["cost"]
    # val (WiSE-FT's choice, every alpha in one pass) too: one entry per seed, read by the seed's other method
    seeds = len(cfg.seeds)
    assert cost["cache"]["hits"] == 3 * (1 + len(ood_names)) + seeds
    assert cost["cache"]["misses"] == 1 + len(ood_names) + seeds
    # the pixel cache: each run reads every set once (all its encoders in one pass), each set decoded once
    pixels = cost["pixel_cache"]
    assert pixels["misses"] == 1 + len(ood_names) + seeds
    assert pixels["hits"] == len(runs) * (2 + len(ood_names)) - pixels["misses"] and pixels["corrupt"] == 0
    assert pixels["bytes_read"] > 0 and pixels["bytes_written"] > 0


def test_two_sweep_processes_on_one_folder_run_each_cell_once(tiny_openclip, world, tmp_path):
    cfg_path = tmp_path / "g.yaml"
    cfg_path.write_text(yaml.safe_dump(grid(tiny_openclip, world, seeds=[1, 2, 3])))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fdalign", "sweep", str(cfg_path), "--out", str(out), "--no-progress"]
    procs = [
        subprocess.Popen(cmd, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sw.plan_runs(sw.load_sweep_config(str(cfg_path)))
    assert [train_calls(r.dir(out)) for r in runs] == [1] * len(runs), outs
    assert [sw.run_state(r.dir(out)) for r in runs] == ["done"] * len(runs)


def test_a_dead_owners_lock_is_taken_over_and_said(tiny_openclip, world, tmp_path):
    cfg = sw.SweepConfig.from_dict(grid(tiny_openclip, world, seeds=[1], methods={"fine-tune": {"beta": 0.0}}))
    run_dir = sw.plan_runs(cfg)[0].dir(tmp_path)
    run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".fdalign.lock.json").write_text(
        json.dumps({"host": os.uname().nodename, "pid": dead.pid, "started": time.time() - 60})
    )
    said: list[str] = []
    res = sw.run_sweep(cfg, tmp_path, progress=False, log=said.append, feature_cache=False)
    assert res.runs[0]["state"] == "done"
    assert any("taking over" in m for m in said), said


def test_ctrl_c_stops_both_workers_and_the_next_call_redoes_no_finished_run(tiny_openclip, world, tmp_path):
    """The first cell trains to the end; every later one waits at its first training step (tests/_gate.py),
    so the Ctrl-C reaches two busy workers whatever the machine's load."""
    import _gate

    cfg_path = tmp_path / "g.yaml"
    cfg_path.write_text(yaml.safe_dump(grid(tiny_openclip, world, seeds=[1, 2, 3])))
    out, gate = tmp_path / "out", tmp_path / "gate"
    args = ["sweep", str(cfg_path), "--out", str(out), "--no-progress", "--workers", "2"]
    runs = sw.plan_runs(sw.load_sweep_config(str(cfg_path)))
    proc = subprocess.Popen(
        _gate.command(gate, 1, args), env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # one cell done, and both workers busy training the next ones (each waiting at the gate)
    _gate.wait_until(
        lambda: _gate.waiting(gate) == 2 and any(sw.run_state(r.dir(out)) == "done" for r in runs),
        proc,
        "one cell done and two waiting",
    )
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the sweep (its workers have their own process group)
    first = proc.communicate(timeout=600)[0]
    assert proc.returncode != 0, first
    states = [sw.run_state(r.dir(out)) for r in runs]
    finished = [r for r, s in zip(runs, states) if s == "done"]
    assert len(finished) == 1, (states, first)
    assert "running" not in states, (states, first)  # every worker stopped cleanly: interrupted or done
    assert states.count("interrupted") == 2, (states, first)  # the busy workers were stopped, not left to finish
    mtimes = {r.key: (r.dir(out) / "metrics.json").stat().st_mtime_ns for r in finished}
    cmd = [sys.executable, "-m", "fdalign", *args]  # no gate now
    again = subprocess.run(cmd, env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [sw.run_state(r.dir(out)) for r in runs] == ["done"] * len(runs)
    assert {r.key: (r.dir(out) / "metrics.json").stat().st_mtime_ns for r in finished} == mtimes
    assert [train_calls(r.dir(out)) for r in finished] == [1] * len(finished)


def test_a_worker_interrupted_alone_stops_the_others_with_one_ctrl_c_each(monkeypatch):
    """A second Ctrl-C would cut a run's checkpointing short, a lost one would let a cell train on:
    every busy worker gets exactly one, and each stops."""
    import fdalign.experiments.launchers as L
    from _cells import interrupted_cells

    sent, kill = [], os.kill
    monkeypatch.setattr(L.os, "kill", lambda pid, sig: (sent.append((pid, sig)), kill(pid, sig))[1])
    ended = []
    with pytest.raises(L.Interrupted):
        LocalWorkers(3, threads=1).run(
            interrupted_cells, [0, 1, 2], lambda slot, cell: None, lambda slot, cell, status: ended.append(cell)
        )
    ctrl_c = [pid for pid, sig in sent if sig == signal.SIGINT]
    assert len(ctrl_c) == 2 and len(set(ctrl_c)) == 2, sent  # workers of cells 1 and 2, once each
    assert ended == []  # none ran on: a Ctrl-C that came before its cell started in the worker was kept


def test_each_local_worker_sees_its_own_device():
    """Worker i is pinned to devices[i % len(devices)] through CUDA_VISIBLE_DEVICES (checked on CPU: the
    variable is what the worker's torch would read); this process's own setting is left as it was."""
    from _cells import visible_devices

    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    started, ended = {}, {}
    LocalWorkers(3, devices=["0", "GPU-1a2b"], threads=1).run(
        visible_devices,
        [0, 1, 2],
        lambda slot, cell: started.setdefault(cell, slot),
        lambda slot, cell, status: ended.setdefault(slot, status),
    )
    assert started == {0: 0, 1: 1, 2: 2}  # three free workers: cell i starts on worker i
    assert {slot: st["devices"] for slot, st in ended.items()} == {0: "0", 1: "GPU-1a2b", 2: "0"}
    assert len({st["pid"] for st in ended.values()} | {os.getpid()}) == 4  # three workers, none of them this one
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before


def test_slurm_jobs_file_keeps_the_cells_an_earlier_call_left_queued(tmp_path, monkeypatch):
    """A second call submits only its own cells; jobs.json must still name the first call's, whose jobs
    Slurm still holds, or a third call would submit them again."""
    from types import SimpleNamespace

    pytest.importorskip("submitit")
    import submitit.slurm.slurm as slurm

    ids = iter(range(101, 200))

    class Executor:  # what submitit's map_array hands back: one job per cell, each with its id
        def map_array(self, fn, cells):
            return [SimpleNamespace(job_id=str(next(ids))) for _ in cells]

    cell = {k: SimpleNamespace(run=SimpleNamespace(key=k)) for k in ("a", "b", "c")}
    launcher = Submitit(str(tmp_path), wait=False)
    monkeypatch.setattr(launcher, "executor", Executor)
    launcher.run(None, [cell["a"], cell["b"]], lambda i, c: None, None)
    launcher.run(None, [cell["c"]], lambda i, c: None, None)
    assert json.loads((tmp_path / "jobs.json").read_text()) == {"a": "101", "b": "102", "c": "103"}
    states = {"101": "PENDING", "102": "RUNNING", "103": "FAILED"}
    monkeypatch.setattr(slurm, "SlurmJob", lambda folder, job_id: SimpleNamespace(state=states[job_id]))
    assert launcher.live(["a", "b", "c"]) == {"a", "b"}  # the next call leaves a and b alone, resubmits c
    launcher.run(None, [cell["c"]], lambda i, c: None, None)
    assert json.loads((tmp_path / "jobs.json").read_text()) == {"a": "101", "b": "102", "c": "104"}


def test_submitit_local_path_resubmits_only_the_failed_cell(tiny_openclip, world, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    for k, v in env(tmp_path).items():
        monkeypatch.setenv(k, v)
    templates = tmp_path / "later.txt"  # missing at first: the "custom" cell fails; written, it succeeds
    cfg = sw.SweepConfig.from_dict(
        grid(
            tiny_openclip,
            world,
            seeds=[1],
            methods={"fine-tune": {"beta": 0.0}, "custom": {"beta": 1.0, "templates": str(templates)}},
        )
    )
    ok, bad = sw.plan_runs(cfg)
    launcher = Submitit(str(tmp_path / "out" / "slurm"), SlurmOptions(time=10), local=True)
    res = sw.run_sweep(cfg, tmp_path / "out", progress=False, log=lambda m: None, launcher=launcher)
    assert [r["state"] for r in res.runs] == ["done", "failed"], res.runs
    jobs = json.loads((tmp_path / "out" / "slurm" / "jobs.json").read_text())
    assert set(jobs) == {ok.key, bad.key}
    mtime = (ok.dir(tmp_path / "out") / "metrics.json").stat().st_mtime_ns
    templates.write_text("a photo of a {}.\na drawing of a {}.\n")
    started: list[str] = []
    res = sw.run_sweep(cfg, tmp_path / "out", progress=False, log=started.append, launcher=launcher)
    assert [r["state"] for r in res.runs] == ["done", "done"], res.runs
    assert [m for m in started if "retrying" in m or "starting" in m] == [f"[2/2] {bad.key}: retrying"]
    assert (ok.dir(tmp_path / "out") / "metrics.json").stat().st_mtime_ns == mtime
    assert json.loads((tmp_path / "out" / "slurm" / "jobs.json").read_text())[bad.key] != jobs[bad.key]


def test_slurm_dry_run_prints_the_array_it_would_submit(tiny_openclip, world, tmp_path, capsys):
    from fdalign.cli import main

    cfg_path = tmp_path / "g.yaml"
    cfg_path.write_text(yaml.safe_dump(grid(tiny_openclip, world)))
    assert (
        main(
            [
                "sweep",
                str(cfg_path),
                "--out",
                str(tmp_path / "out"),
                "--dry-run",
                "--launcher",
                "slurm",
                "--partition",
                "gpu",
                "--time",
                "90",
                "--array-parallelism",
                "2",
                "--sbatch",
                "account=proj",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    for line in [
        "#SBATCH --array=0-3%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --account=proj",
        "task 3: w/k1/s2/fine-tune",
    ]:
        assert line in text, text
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize(
    "flags,said",
    [
        (["--workers", "2", "--devices", "0,gpu1"], "'gpu1' is not a GPU"),
        (["--workers", "0"], "--workers 0: give 1 or more"),
        (["--launcher", "slurm", "--time", "-5"], "--time -5: give 1 or more"),
        (["--launcher", "slurm", "--array-parallelism", "0"], "--array-parallelism 0: give 1 or more"),
        (["--launcher", "slurm", "--mem-gb", "0"], "--mem-gb 0: give 1 or more"),
        (["--launcher", "slurm", "--sbatch", "=x"], "write KEY=VALUE"),
    ],
)
def test_bad_launcher_options_are_one_line_before_anything_runs(tiny_openclip, world, tmp_path, capsys, flags, said):
    from fdalign.cli import main

    cfg_path = tmp_path / "g.yaml"
    cfg_path.write_text(yaml.safe_dump(grid(tiny_openclip, world)))
    assert main(["sweep", str(cfg_path), "--out", str(tmp_path / "out"), "--dry-run", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("fdalign sweep: error: ") and said in err, err
    assert not (tmp_path / "out" / "runs").exists()
    assert SlurmOptions(gpus_per_task=0).gpus_per_task == 0  # a CPU-only array is allowed


def test_the_report_states_the_cost(one_worker, tmp_path):
    from fdalign.experiments.report import build_report

    rep = build_report([one_worker["out"]], tmp_path, plots=False, features=False)
    cost = dict(rep.sections)["Cost"]
    book = json.loads((one_worker["out"] / "sweep.json").read_text())["cost"]
    assert f"{book['cache']['hits']} hits" in cost[0] and f"{book['wall_seconds']:.0f} s wall" in cost[0]
    assert (
        [row[0] for row in cost[1].rows]
        == list(book["busy_seconds"])
        == [
            json.loads((r.dir(one_worker["out"]) / "status.json").read_text())["worker"] for r in one_worker["runs"][:1]
        ]
    )


def test_a_cell_trained_outside_the_sweep_from_its_request_is_done(tiny_openclip, world, tmp_path):
    """The DDP-per-cell recipe: `fdalign train --config RUN/request.yaml` (torchrun) in a job of its own."""
    from fdalign import finetune

    cfg = sw.SweepConfig.from_dict(grid(tiny_openclip, world, seeds=[1], methods={"fine-tune": {"beta": 0.0}}))
    run = sw.plan_runs(cfg)[0]
    rc = sw.run_config(cfg, run, tmp_path)
    run.dir(tmp_path).mkdir(parents=True)
    rc.to_yaml(run.dir(tmp_path) / sw.REQUEST_FILE)
    finetune(rc)
    mtime = (run.dir(tmp_path) / "metrics.json").stat().st_mtime_ns
    res = sw.run_sweep(cfg, tmp_path, progress=False, log=lambda m: None, feature_cache=False)
    assert res.runs[0]["state"] == "done" and res.failed == 0
    assert not (run.dir(tmp_path) / "train.log").exists()  # the sweep trained nothing
    assert (run.dir(tmp_path) / "metrics.json").stat().st_mtime_ns == mtime
    assert sw.run_state(run.dir(tmp_path)) == "done"


def test_a_run_trained_outside_is_taken_for_the_cell_only_from_its_request(tiny_openclip, world, tmp_path):
    from fdalign import finetune
    from fdalign.errors import FDAlignError

    d = grid(tiny_openclip, world, seeds=[1], methods={"fine-tune": {"beta": 0.0}})
    cfg = sw.SweepConfig.from_dict(d)
    run = sw.plan_runs(cfg)[0]
    rc, request = sw.run_config(cfg, run, tmp_path), run.dir(tmp_path) / sw.REQUEST_FILE
    run.dir(tmp_path).mkdir(parents=True)
    rc.to_yaml(request)
    finetune(rc)
    text = request.read_text()
    d["train"]["lr"] = 2e-3  # the sweep now asks for another learning rate: refused, nothing touched
    with pytest.raises(FDAlignError, match="lr differ from the sweep config"):
        sw.run_sweep(sw.SweepConfig.from_dict(d), tmp_path, progress=False, log=lambda m: None, feature_cache=False)
    assert request.read_text() == text and not (run.dir(tmp_path) / "train.log").exists()
    request.unlink()  # a run with no request: nothing says it is this cell's
    res = sw.run_sweep(cfg, tmp_path, progress=False, log=lambda m: None, feature_cache=False)
    assert res.failed == 1 and "without the request.yaml" in res.runs[0]["error"], res.runs
    assert not (run.dir(tmp_path) / "train.log").exists() and not request.exists()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_sweep_leaves_no_worker_training_on(how, tiny_openclip, world, tmp_path):
    """`kill` (SIGTERM, as Slurm's time limit sends) or SIGKILL (the OOM killer) of a sweep with two workers:
    each worker stops its run as for Ctrl-C (checkpointed, "interrupted", the cell's lock released) instead
    of training on unseen and holding its cell."""
    import _gate

    cfg_path = tmp_path / "g.yaml"
    cfg_path.write_text(yaml.safe_dump(grid(tiny_openclip, world, seeds=[1])))
    out, gate = tmp_path / "out", tmp_path / "gate"
    args = ["sweep", str(cfg_path), "--out", str(out), "--no-progress", "--workers", "2"]
    runs = sw.plan_runs(sw.load_sweep_config(str(cfg_path)))
    log = tmp_path / "sweep.log"  # a file, not a pipe: a worker left alive would hold a pipe open
    with open(log, "w") as fh:
        proc = subprocess.Popen(_gate.command(gate, 0, args), env=env(tmp_path), stdout=fh, stderr=subprocess.STDOUT)
    _gate.wait_until(lambda: _gate.waiting(gate) == 2, proc, "both workers waiting in their first cell")
    workers = [int(p.name.split("-")[1]) for p in gate.glob("waiting-*")]
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=600)
    deadline = time.monotonic() + 600  # a safety bound: a worker ends as soon as its checkpoint is written
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    said = log.read_text()
    assert not any(map(_alive, workers)), f"a worker trains on after its sweep got {how}: {said}"
    assert [sw.run_state(r.dir(out)) for r in runs] == ["interrupted"] * 2, said


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.is_file() and state.read_text().split(")")[-1].split()[0] == "Z")  # a zombie has ended
