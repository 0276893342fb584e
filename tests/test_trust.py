"""Trust, round 3 (issue 25 items 1-11): no user file deleted, every cache checked against its own key, every
reader of a run's model checks its recorded hash, runs whose files disagree are damaged, sweep.json merged
under a lock, and bounded YAML with one-line errors."""

import json
import os
import socket

import pytest

from fdalign.cli import main
from test_cli_train import folders  # noqa: F401 (the generated folders and templates)
from test_integrity import _args, _copy_run, finished_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("cli_env")


# ---- item 1: a killed write's temp files are removed, a user's files never ------------------------------


def test_train_into_an_existing_folder_keeps_the_users_dot_files(tiny_openclip, folders, tmp_path):
    out = tmp_path / "out"
    mine = [
        out / ".config.old" / "settings.ini",
        out / "notes" / ".todo.txt.old",
        out / "notes" / "deep" / ".draft.tmp",
    ]
    mine += [out / ".notes.tmp", out / "model" / ".keep.old"]  # even beside fdalign's own files
    for p in mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("the user's")
    stale = [
        out / ".fdalign-tmp.metrics.json.k1ll3d00.tmp",
        out / "model" / ".fdalign-tmp.best.safetensors.abcd_123.tmp",
    ]
    for p in stale:
        p.write_bytes(b"partial")
    with pytest.warns(UserWarning, match=r"removed 2 temporary file\(s\) left by a killed fdalign write") as rec:
        assert main(_args(tiny_openclip, folders, out)) == 0
    said = " ".join(str(w.message) for w in rec)
    assert ".fdalign-tmp.metrics.json.k1ll3d00.tmp" in said and "best.safetensors.abcd_123.tmp" in said
    assert all(p.read_text() == "the user's" for p in mine)
    assert not any(p.exists() for p in stale)


def test_only_fdalign_temp_names_in_fdalign_folders_are_stale(tmp_path):
    from fdalign.io import atomic_directory, atomic_write_bytes, is_temp_name, remove_stale_temps

    seen = []
    real_replace = os.replace

    def spy(src, dst):  # the names fdalign really writes are the ones it later recognises
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    import fdalign.io as io_mod

    io_mod.os.replace = spy
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        with atomic_directory(tmp_path / "d") as d:
            (d / "x").write_text("x")
    finally:
        io_mod.os.replace = real_replace
    assert seen and all(is_temp_name(n) for n in seen), seen
    assert not is_temp_name(".a.json.abcdefgh.tmp") and not is_temp_name(".fdalign-tmp.a.json.tmp")
    deep = tmp_path / "notes" / ".fdalign-tmp.x.abcdefgh.tmp"  # not a folder fdalign writes
    deep.parent.mkdir()
    deep.write_text("keep")
    assert remove_stale_temps(tmp_path) == [] and deep.exists()


# ---- item 11: the lock take-over message -------------------------------------------------------------------


def test_taking_over_a_lock_from_another_host_does_not_say_the_process_ended(tmp_path):
    from fdalign.io import run_lock

    owner = {"host": socket.gethostname() + "-elsewhere", "pid": os.getpid(), "since": "2026-01-01 00:00:00"}
    (tmp_path / ".fdalign.lock.json").write_text(json.dumps(owner))
    with pytest.warns(UserWarning) as rec:
        with run_lock(tmp_path):
            pass
    said = " ".join(str(w.message) for w in rec)
    assert "cannot see processes on host " + owner["host"] in said and "ended" not in said, said
    (tmp_path / ".fdalign.lock.json").write_text(json.dumps(dict(owner, host=socket.gethostname())))
    with pytest.warns(UserWarning, match="alive but does not hold the lock"):
        with run_lock(tmp_path):
            pass


# ---- items 2, 3: each cache entry carries the key (and epoch) it was written for ---------------------------


def test_a_prompt_cache_entry_copied_over_another_is_a_miss(tmp_path):
    import shutil

    import torch

    from fdalign.prototypes import encode_prompt_features, prompt_cache_key
    from test_prototypes import CLASSES as P_CLASSES
    from test_prototypes import TEMPLATES as P_TEMPLATES
    from test_prototypes import FakeBackend

    be = FakeBackend()
    mine = encode_prompt_features(be, P_CLASSES, P_TEMPLATES, cache_dir=tmp_path)
    others = ["x" + c for c in P_CLASSES]  # another class set, same shape
    theirs = encode_prompt_features(be, others, P_TEMPLATES, cache_dir=tmp_path)
    key = prompt_cache_key(be.fingerprint, P_CLASSES, P_TEMPLATES)
    shutil.copy(
        tmp_path / f"{prompt_cache_key(be.fingerprint, others, P_TEMPLATES)}.safetensors",
        tmp_path / f"{key}.safetensors",
    )
    with pytest.warns(UserWarning, match=f"{key}.safetensors: it was written for key [0-9a-f]{{64}}, not"):
        again = encode_prompt_features(be, P_CLASSES, P_TEMPLATES, cache_dir=tmp_path)
    assert torch.equal(again, mine) and not torch.equal(again, theirs)
    assert torch.equal(encode_prompt_features(be, P_CLASSES, P_TEMPLATES, cache_dir=tmp_path), mine)  # rewritten


def test_an_f0_cache_entry_of_another_epoch_is_a_miss(tiny_openclip, tmp_path):
    from test_f0_cache import EPOCHS, _run, _same

    assert EPOCHS >= 2
    plain = _run(tiny_openclip, tmp_path, "plain")
    _run(tiny_openclip, tmp_path, "first", cache=str(tmp_path / "c"))
    (entry,) = (tmp_path / "c").iterdir()
    (entry / "epoch_0000.safetensors").write_bytes((entry / "epoch_0001.safetensors").read_bytes())
    with pytest.warns(UserWarning, match="epoch_0000.safetensors: it was written for key [0-9a-f]+ epoch 1"):
        res = _run(tiny_openclip, tmp_path, "second", cache=str(tmp_path / "c"))
    assert (res.f0_cache_epochs_read, res.f0_cache_epochs_written) == (EPOCHS - 1, 1)
    assert _same(plain, res)


# ---- item 9: class folders named with non-UTF-8 bytes -------------------------------------------------------


def test_train_reads_a_class_folder_named_with_non_utf8_bytes(tiny_openclip, tmp_path, capsys):
    from _synth import make_imagefolder, write_templates
    from test_cli_train import TEMPLATES

    data = make_imagefolder(tmp_path / "data", ["red apple", "green leaf", "blue sky"], n_train=4, n_test=2, seed=0)
    for split in ("train", "test"):
        os.rename(data / split / "green_leaf", os.fsencode(data / split) + b"/gr\xfcn")
    fake = {"id": data, "templates": write_templates(tmp_path / "t.txt", TEMPLATES)}
    capsys.readouterr()
    assert main(_args(tiny_openclip, fake, tmp_path / "run")) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]


# ---- item 4, 10: every reader of a run's model checks the run's recorded hash; a changed header is one line ----


def _strip_hash_and_change(model_file):
    """A model whose content hash was removed and one tensor changed: the file alone looks valid."""
    from safetensors.torch import load, save

    from fdalign.io import HASH_KEY, _split_safetensors

    data = model_file.read_bytes()
    meta = dict(_split_safetensors(data)[0]["__metadata__"])
    meta.pop(HASH_KEY)
    tensors = load(data)
    name = next(k for k in sorted(tensors) if k.startswith("encoder.") and tensors[k].is_floating_point())
    tensors[name] = tensors[name] + 0.5
    model_file.write_bytes(save(tensors, metadata=meta))


def _eval_and_predict(run, folders, tmp_path):
    image = next((folders["id"] / "test").rglob("*.png"))
    return [
        main(["eval", str(run), "--data", str(folders["id"]), "--device", "cpu", "--no-progress"]),
        main(["predict", str(run), str(image), "--out", str(tmp_path / "p.csv")]),
    ]


def test_eval_and_predict_refuse_a_changed_model_whose_hash_was_stripped(finished_run, folders, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    _strip_hash_and_change(run / "model" / "best.safetensors")
    capsys.readouterr()
    assert _eval_and_predict(run, folders, tmp_path) == [2, 2]
    err = capsys.readouterr().err
    assert err.count("is not the one its run finished training with") == 2 and "Traceback" not in err, err


def test_a_changed_byte_in_the_hash_key_name_is_one_line(finished_run, folders, tmp_path, capsys):
    from fdalign.io import HASH_KEY

    run = _copy_run(finished_run, tmp_path / "run")
    model = run / "model" / "best.safetensors"
    data = model.read_bytes()
    assert data.count(HASH_KEY.encode()) == 1
    model.write_bytes(data.replace(HASH_KEY.encode(), HASH_KEY[:-1].encode() + b"7"))
    capsys.readouterr()
    assert _eval_and_predict(run, folders, tmp_path) == [2, 2]
    err = capsys.readouterr().err
    assert err.count("is not the one its run finished training with") == 2 and "Traceback" not in err, err
    (run / "model" / "best.sha256").unlink()  # a run from before the record: the header itself is refused
    assert _eval_and_predict(run, folders, tmp_path) == [2, 2]
    err = capsys.readouterr().err
    assert err.count(f"header entry '{HASH_KEY[:-1]}7' is not one fdalign writes") == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2, err


# ---- items 7, 8: one bounded YAML reader, duplicate keys and non-UTF-8 bytes refused in one line ---------------

# 10 levels of 9-way aliases inside ood: (the attack of issue 25): 9**10 values once expanded
BOMB = "\n".join(
    ["ood:", "  - &x0 [a, a, a, a, a, a, a, a, a]"]
    + [f"  - &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 11)]
)


def _one_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_an_alias_bomb_is_refused_by_train_and_by_a_sweep_dry_run(tmp_path, capsys):
    from fdalign.errors import FDAlignError
    from fdalign.options import load_yaml_text

    with pytest.raises(FDAlignError):  # first on its own: an unbounded reader fails here, before any GB is used
        load_yaml_text(BOMB, "t")
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(BOMB + "\n")
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = _one_line(capsys)
    assert f"{cfg} holds" in err and "aliases" in err and "more than the 200000" in err, err
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: bomb\n" + BOMB.replace("ood:", "datasets:") + "\n")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "s"), "--dry-run"]) == 2
    assert f"{sweep} holds" in _one_line(capsys)


def test_duplicate_keys_and_non_utf8_bytes_in_a_config_are_one_line(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("epochs: 3\nlr: 0.001\nshots: 4\nlr: 0.1\n")
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = _one_line(capsys)
    assert "key 'lr' appears twice" in err and "line 2 and line 4" in err and str(cfg) in err, err
    cfg.write_bytes(b"epochs: 3\nnotes: caf\xe9\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert f"{cfg} is not UTF-8 text" in _one_line(capsys)


def test_the_bounded_reader_keeps_what_yaml_allows_and_refuses_a_self_reference():
    from fdalign.errors import FDAlignError
    from fdalign.options import load_yaml_text

    assert load_yaml_text("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n", "t") == {
        "base": {"x": 1, "y": 2},
        "d": {"x": 3, "y": 2},
    }
    assert load_yaml_text("a: &a [1, 2]\nb: [*a, *a]\n", "t") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    assert load_yaml_text("", "t") is None
    for text, words in [
        ("a: &a [*a]\n", "contains itself"),
        ("{a: 1, b: {c: 1, c: 2}}", "key 'c' appears twice"),
        ("a: [1\n", "is not valid YAML"),
    ]:
        with pytest.raises(FDAlignError, match=words):
            load_yaml_text(text, "t")


def test_every_yaml_read_in_src_goes_through_the_bounded_reader():
    import ast
    from pathlib import Path

    import fdalign

    src = Path(fdalign.__file__).parent  # the code under test (tools/plant_bugs.py points it at a scratch copy)
    calls = []
    for p in src.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml":
                if node.attr.startswith(("load", "safe_load", "full_load", "unsafe_load", "compose", "parse")):
                    calls.append(f"{p.relative_to(src)}:{node.lineno} yaml.{node.attr}")
    assert calls == [], calls


# ---- item 5: a run whose config.yaml, metrics.json and sweep cell disagree is damaged, not a row -------------


def _set_metrics_config(run, **changes):
    doc = json.loads((run / "metrics.json").read_text())
    doc["config"].update(changes)
    (run / "metrics.json").write_text(json.dumps(doc))


def test_a_run_whose_metrics_contradict_its_config_is_listed_as_damaged(finished_run, tmp_path):
    import yaml

    from fdalign.experiments.runs import find_runs

    good = _copy_run(finished_run, tmp_path / "runs" / "good")
    bad = _copy_run(finished_run, tmp_path / "runs" / "bad")
    _set_metrics_config(bad, dataset_name="eurosat", shots=16, model="ViT-B-32", seed=7)
    runs, meta = find_runs([tmp_path / "runs"])
    assert [r.dir.name for r in runs] == ["good"], [r.dir for r in runs]
    (skip,) = meta["skipped"]
    assert skip.dir == bad and skip.state == "damaged"
    assert "config.yaml and metrics.json disagree" in skip.why and "shots 2 vs 16" in skip.why, skip.why
    moved = _copy_run(finished_run, tmp_path / "moved" / "run")  # how it ran may differ: not a disagreement
    _set_metrics_config(moved, out="/elsewhere", device="cuda", resume=True, num_workers=8)
    assert [r.dir for r in find_runs([tmp_path / "moved"])[0]] == [moved]
    # both files copied from a 16-shot run into a 2-shot sweep cell: its status.json says otherwise
    cell = _copy_run(finished_run, tmp_path / "cell" / "c")
    _set_metrics_config(cell, shots=16)
    cfg = yaml.safe_load((cell / "config.yaml").read_text())
    (cell / "config.yaml").write_text(yaml.safe_dump(dict(cfg, shots=16)))
    run = {"dataset": "w2", "shots": 2, "seed": cfg["seed"], "method": "fd-align"}
    (cell / "status.json").write_text(json.dumps({"run": run, "state": "done"}))
    _copy_run(good, tmp_path / "cell" / "ok")
    runs, meta = find_runs([tmp_path / "cell"])
    assert [r.dir.name for r in runs] == ["ok"] and "its sweep cell (status.json) is shots 2" in meta["skipped"][0].why


# ---- item 6, 11: sweep.json merged under a lock; the sweep's last line names damaged cache entries ----------


class _StubConfig:
    def to_dict(self):
        return {"name": "stub"}


def _cell_done(out, run, worker, busy):
    """What run_cell leaves in a cell another process ran: its status.json and metrics.json."""
    d = run.dir(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text("{}")
    status = {"run": run.to_json(), "state": "done", "seconds": busy, "worker": worker, "busy": busy}
    (d / "status.json").write_text(json.dumps(status))
    return status


def test_two_sweep_processes_on_one_folder_keep_each_others_records(tmp_path):
    from fdalign.experiments.sweep import RECORD_KEYS, RunSpec, _Book

    runs = [RunSpec("w2", 2, s, "fd-align") for s in range(4)]

    def book(t0):
        records = {r: {"key": r.key, "dir": str(r.dir(tmp_path).relative_to(tmp_path)), "state": "new"} for r in runs}
        return _Book(tmp_path, _StubConfig(), None, runs, records, t0, "InProcess", 1), records

    (a, rec_a), (b, rec_b) = book(100.0), book(101.0)  # two processes started on one folder
    a.save()
    b.save()
    for book_, records, mine, worker in ((a, rec_a, runs[:2], "hostA:1"), (b, rec_b, runs[2:], "hostB:2")):
        for i, r in enumerate(mine):
            book_.mine.add(r)
            status = _cell_done(tmp_path, r, worker, 5.0 + i)
            records[r].update({k: status[k] for k in RECORD_KEYS if k in status})
            book_.save()  # each cell's end: the other process's saves come in between
    a.save()
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert doc["cost"]["busy_seconds"] == {"hostA:1": 11.0, "hostB:2": 11.0}, doc["cost"]
    assert [r["state"] for r in doc["runs"]] == ["done"] * 4
    assert sorted(i["started"] for i in doc["cost"]["invocations"]) == [100.0, 101.0]


def test_sweep_json_is_written_under_its_lock(tmp_path, monkeypatch):
    import filelock

    from fdalign.experiments import sweep as sweep_mod
    from fdalign.io import RunLockedError

    records = {}
    bk = sweep_mod._Book(tmp_path, _StubConfig(), None, [], records, 100.0, "InProcess", 1)
    monkeypatch.setattr(sweep_mod, "SWEEP_LOCK_TIMEOUT", 0.05)
    other = filelock.FileLock(str(tmp_path / sweep_mod.SWEEP_LOCK), is_singleton=False)  # another process's hold
    with other:
        with pytest.raises(RunLockedError, match="sweep.json.lock was held by another fdalign process"):
            bk.save()
    assert not (tmp_path / "sweep.json").exists()
    bk.save()
    assert (tmp_path / "sweep.json").is_file()


def test_the_sweeps_last_line_names_damaged_cache_entries():
    from types import SimpleNamespace

    from fdalign.cli.sweep import summary_line

    res = SimpleNamespace(runs=[1, 2], executed=2, skipped=0, failed=0, seconds=3.0, cost={})
    res.cost = {"cache": {"hits": 4, "corrupt": 2, "seconds_saved": 1.0}}
    assert "4 hits, 1 s saved, 2 damaged entries recomputed; report: fdalign report out" in summary_line(
        "s", res, "out"
    )
    res.cost["cache"]["corrupt"] = 0
    assert "damaged" not in summary_line("s", res, "out")


# ---- item 10: --lr beyond float32 is one line; item 11: training time summed over resumed segments ----------


@pytest.mark.parametrize("flag,value", [("--lr", "1e39"), ("--lr", "1e300"), ("--beta", "1e39")])
def test_a_learning_rate_beyond_float32_is_one_line(tiny_openclip, folders, tmp_path, capsys, flag, value):
    capsys.readouterr()
    assert main(_args(tiny_openclip, folders, tmp_path / "run", flag, value)) == 2
    err = _one_line(capsys)
    assert f"{flag[2:]} = {float(value)!r} is beyond what float32 holds" in err, err


def test_metrics_record_the_training_time_of_every_resumed_segment(tiny_openclip, folders, tmp_path, monkeypatch):
    import time as real_time

    from fdalign.train import checkpoint as ck_mod
    from fdalign.train import trainer as trainer_mod

    class SlowClock:  # segment 1 "takes" 10000 s a call: no sleeping, no race
        calls = 0

        def __getattr__(self, name):
            return getattr(real_time, name)

        def time(self):
            SlowClock.calls += 1
            return 10_000.0 * SlowClock.calls

    real_save = ck_mod.atomic_save_safetensors

    def killed_after_epoch_1(path, tensors, meta):
        real_save(path, tensors, meta)
        if json.loads(meta["state"])["epoch"] == 1:
            raise SystemExit(137)

    out = tmp_path / "run"
    monkeypatch.setattr(trainer_mod, "time", SlowClock())
    monkeypatch.setattr(ck_mod, "atomic_save_safetensors", killed_after_epoch_1)
    with pytest.raises(SystemExit):
        main(_args(tiny_openclip, folders, out, "--epochs", "2"))
    monkeypatch.undo()
    first = json.loads((out / "checkpoint" / "last.json").read_text())
    assert first["epoch"] == 1 and first["train_seconds"] >= 10_000, first
    assert main(_args(tiny_openclip, folders, out, "--epochs", "2", "--resume")) == 0
    total = json.loads((out / "metrics.json").read_text())["train"]["seconds"]
    assert first["train_seconds"] <= total < first["train_seconds"] + 10_000, (total, first["train_seconds"])


def test_a_cell_another_process_held_or_finished_is_not_counted_as_run_now(tmp_path):
    from types import SimpleNamespace

    from fdalign.experiments.sweep import RunSpec, _Progress

    runs = [RunSpec("w2", 2, s, "fd-align") for s in range(3)]
    said = []
    p = _Progress(SimpleNamespace(name="s"), runs, 0, 3, 1, False, said.append)
    p.end(0, runs[0], {"state": "claimed", "error": "in use by another fdalign process"}, tmp_path)
    p.end(0, runs[1], {"state": "done", "skipped": True}, tmp_path)
    p.end(0, runs[2], {"state": "done", "seconds": 1.0}, tmp_path)
    assert p.executed == 1 and p._left() == 0, said


def test_the_sweep_json_lock_leaves_no_file_and_is_taken_on_the_current_name(tmp_path):
    from fdalign.io import shared_file_lock

    with shared_file_lock(tmp_path / ".x.lock", "x"):
        assert (tmp_path / ".x.lock").exists()
    assert not (tmp_path / ".x.lock").exists()
