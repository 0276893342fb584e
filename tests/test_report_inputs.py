"""`fdalign report` is explicit about what it read: it never merges runs with other settings, never
counts a run's eval/ folders as runs, never writes into a folder it reads without --out, lists the
failed, missing, damaged and duplicate runs it did not use, and prints no "± 0.0" for one seed."""

from __future__ import annotations

import json
import statistics

import pytest

from fdalign.cli import main
from test_report import _md_rows, fake_run


def _report(*dirs, out, capsys=None) -> str:
    assert main(["report", *map(str, dirs), "--no-plots", "--out", str(out)]) == 0
    return (out / "report.md").read_text()


def _table(report: str, section: str) -> list[list[str]]:
    """The rows of the first table in a ``## section`` of a markdown report."""
    block = report.split(f"## {section}\n")[1].split("\n## ")[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("| ")][1:]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]


# ----------------------------------------------------------------------------------------------
# item 1: runs with the same key and other settings


def test_runs_with_other_settings_are_kept_apart_and_listed(tmp_path):
    """`fdalign report sweepA runs/x`: runs/x has fd-align seed 1 with 2 epochs where sweepA had 4.
    Before, the last run read replaced sweepA's seed 1 (ID 54.2 ± 2.0 became 52.8 ± 0.0, no word)."""
    a, x = tmp_path / "sweepA", tmp_path / "x"
    for seed, v in ((1, 52.8), (2, 55.6)):
        fake_run(a, "w", 4, seed, "fine-tune", 50.0, epochs=4)
        fake_run(a, "w", 4, seed, "fd-align", v, epochs=4)
    fake_run(x, "w", 4, 1, "fd-align", 40.0, epochs=2)
    report = _report(a, x, out=tmp_path / "rep")
    rows = _md_rows(report, "w, 4-shot")
    # sweepA's two seeds stay together; the 2-epoch run is a row of its own, named after what differs
    assert rows["fd-align"][:2] == ["2", f"{statistics.fmean([52.8, 55.6]):.1f} ± {statistics.stdev([52.8, 55.6]):.1f}"]
    assert rows["fd-align [epochs=2]"][:2] == ["1", "40.0"]
    assert "kept apart as `fd-align [epochs=2]`" in report
    used = _table(report, "Runs read")
    assert len(used) == 5
    by_dir = {r[0]: r for r in used}
    two = by_dir[str(x / "runs/w/k4/s1/fd-align")]
    assert two[1:] == ["w/k4/s1/fd-align", "fd-align [epochs=2]", "beta=20.0, epochs=2"]
    assert by_dir[str(a / "runs/w/k4/s1/fine-tune")][3] == "beta=0.0, epochs=4"


def test_a_run_predating_a_field_is_the_same_row_as_one_with_its_default(tmp_path):
    """Seeds 1-2 recorded before ``trainable`` / ``lora_rank`` existed, seed 3 with their defaults: one
    row of three seeds. A run with a non-default value is still kept apart."""
    a = tmp_path / "a"
    fake_run(a, "w", 4, 1, "fd-align", 50.0)
    fake_run(a, "w", 4, 2, "fd-align", 52.0)
    fake_run(a, "w", 4, 3, "fd-align", 57.0, trainable="full", lora_rank=8)
    fake_run(a, "w", 4, 4, "fd-align", 40.0, trainable="bias", lora_rank=8)
    rows = _md_rows(_report(a, out=tmp_path / "rep"), "w, 4-shot")
    assert rows["fd-align"][:2] == ["3", f"53.0 ± {statistics.stdev([50, 52, 57]):.1f}"]
    assert rows["fd-align [trainable=bias]"][:2] == ["1", "40.0"]


def test_the_same_run_read_twice_is_used_once_and_listed(tmp_path):
    a = tmp_path / "a"
    for seed, v in ((1, 50.0), (2, 52.0)):
        fake_run(a, "w", 4, seed, "fine-tune", v)
    copy = tmp_path / "copy"
    fake_run(copy, "w", 4, 2, "fine-tune", 99.0)  # same key and settings, another number
    report = _report(a, copy, out=tmp_path / "rep")
    assert _md_rows(report, "w, 4-shot")["fine-tune"][:2] == ["2", f"51.0 ± {statistics.stdev([50, 52]):.1f}"]
    unused = _table(report, "Failed, missing and unused runs")
    assert unused == [
        [
            str(copy / "runs/w/k4/s2/fine-tune"),
            "w/k4/s2/fine-tune",
            "duplicate",
            f"same key and settings as {a / 'runs/w/k4/s2/fine-tune'}, which is used",
        ]
    ]
    assert "Not in the tables: 1 duplicate" in report


# ----------------------------------------------------------------------------------------------
# items 4 and F7: sweep cells that failed, never ran, or have a damaged status.json


def _cell(sweep, dataset, seed, method, top1, state="done", error=None):
    run = {"dataset": dataset, "shots": 2, "seed": seed, "method": method}
    d = sweep / "runs" / dataset / "k2" / f"s{seed}" / method
    if state == "done":
        fake_run(sweep, dataset, 2, seed, method, top1)
    else:
        d.mkdir(parents=True)
        (d / "config.yaml").write_text("model: x\n")
    (d / "status.json").write_text(json.dumps({"run": run, "state": state, **({"error": error} if error else {})}))
    return d


def _sweep_index(sweep, cells):
    runs = [{"key": f"{ds}/k2/s{s}/{m}", "dir": f"runs/{ds}/k2/s{s}/{m}", "state": "new"} for ds, s, m in cells]
    cfg = {"name": "g", "methods": {"fine-tune": {"beta": 0.0}}, "reference": "fine-tune"}
    (sweep / "sweep.json").write_text(json.dumps({"format": "fdalign-sweep/1", "config": cfg, "runs": runs}))


def test_failed_and_missing_sweep_cells_are_listed(tmp_path, capsys):
    """A whole data set failed: before, the report said "1 runs" and never named the failed cells."""
    sweep = tmp_path / "sweep"
    _cell(sweep, "a", 1, "fine-tune", 50.0)
    _cell(sweep, "b", 1, "fine-tune", 0, state="failed", error="train: error: CUDA out of memory")
    _cell(sweep, "b", 2, "fine-tune", 0, state="interrupted")
    _sweep_index(sweep, [("a", 1, "fine-tune"), ("b", 1, "fine-tune"), ("b", 2, "fine-tune"), ("a", 2, "fine-tune")])
    assert main(["report", str(sweep), "--no-plots"]) == 0  # a single sweep folder is the default --out
    report = (sweep / "report.md").read_text()
    assert "Not in the tables: 1 failed, 1 interrupted, 1 not run" in report
    assert "Not in the tables: 1 failed" in capsys.readouterr().out  # the terminal says it too
    rows = {r[1]: r for r in _table(report, "Failed, missing and unused runs")}
    assert rows["b/k2/s1/fine-tune"][2:] == ["failed", "train: error: CUDA out of memory"]
    assert rows["b/k2/s2/fine-tune"][2] == "interrupted"
    assert rows["a/k2/s2/fine-tune"][0] == str(sweep / "runs/a/k2/s2/fine-tune")
    assert rows["a/k2/s2/fine-tune"][2] == "not run"
    assert len(_table(report, "Runs read")) == 1


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00garbage", b"[1, 2]", b'{"state": '])
def test_one_damaged_status_json_does_not_block_the_report(tmp_path, capsys, damage):
    sweep = tmp_path / "sweep"
    _cell(sweep, "a", 1, "fine-tune", 50.0)
    bad = _cell(sweep, "a", 2, "fine-tune", 60.0)
    (bad / "status.json").write_bytes(damage)
    _sweep_index(sweep, [("a", 1, "fine-tune"), ("a", 2, "fine-tune")])
    assert main(["report", str(sweep), "--no-plots"]) == 0
    report = (sweep / "report.md").read_text()
    assert _md_rows(report, "a, 2-shot")["fine-tune"][:2] == ["1", "50.0"]  # the damaged run is not trusted
    (row,) = _table(report, "Failed, missing and unused runs")
    assert row[0] == str(bad) and row[2] == "damaged" and str(bad / "status.json") in row[3]
    assert "Traceback" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# item 15: one seed


def test_one_seed_prints_its_value_without_a_spread(tmp_path):
    fake_run(tmp_path, "w", 4, 1, "fine-tune", 50.0, ood={"sketch": 30.0})
    fake_run(tmp_path, "w", 4, 1, "fd-align", 54.2, ood={"sketch": 41.0})
    report = _report(tmp_path, out=tmp_path / "rep")
    rows = _md_rows(report.split("## Paired")[0], "w, 4-shot")
    assert rows["fd-align"][:4] == ["1", "54.2", "41.0", "41.0"]
    assert rows["zero-shot"][:4] == ["1", "45.0", "25.0", "25.0"]  # fake runs: zero-shot = fine-tuned - 5
    paired = _md_rows(report.split("## Paired")[1], "w, 4-shot")
    assert paired["fd-align"] == ["1", f"{54.2 - 50.0:+.1f}", "+11.0", "1 of 1"]
    assert "± 0.0" not in report


# ----------------------------------------------------------------------------------------------
# items 2 and 3 on a real `fdalign train` run, evaluated again with `fdalign eval`


@pytest.fixture(scope="module")
def evaluated_run(tiny_openclip, tmp_path_factory):
    """`fdalign train` (tiny model, 1 epoch), then `fdalign eval RUN --ood other=PATH` (RUN/eval) and
    `fdalign eval RUN --heads tip` (RUN/eval-heads): one run with two evaluation folders inside."""
    from _synth import make_imagefolder
    from conftest import cli_session

    root = tmp_path_factory.mktemp("report_inputs")
    data = make_imagefolder(root / "id", ["red apple", "green leaf", "blue sky"], n_train=4, n_test=2, n_val=2)
    ood = make_imagefolder(root / "ood", ["red apple", "blue sky"], n_train=0, n_test=2, seed=1) / "test"
    other = make_imagefolder(root / "other", ["green leaf", "blue sky"], n_train=0, n_test=2, seed=2) / "test"
    run = root / "run"
    with cli_session(root):
        assert (
            main(
                [
                    "train",
                    "--model",
                    "tiny",
                    "--model-config",
                    str(tiny_openclip["config"]),
                    "--pretrained",
                    str(tiny_openclip["checkpoint"]),
                    "--data",
                    str(data),
                    "--ood",
                    f"shifted={ood}",
                    "--shots",
                    "2",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "3",
                    "--num-workers",
                    "0",
                    "--templates",
                    "tip7",
                    "--no-spc",
                    "--wiseft-alphas",
                    "0",
                    "1",
                    "--device",
                    "cpu",
                    "--no-progress",
                    "--out",
                    str(run),
                ]
            )
            == 0
        )
        assert main(["eval", str(run), "--ood", f"other={other}", "--device", "cpu", "--no-progress"]) == 0
        assert (
            main(
                [
                    "eval",
                    str(run),
                    "--heads",
                    "tip",
                    "--out",
                    str(run / "eval-heads"),
                    "--device",
                    "cpu",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert (run / "eval" / "metrics.json").is_file() and (run / "eval-heads" / "metrics.json").is_file()
    return run


def _files(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_runs_eval_folders_are_not_runs(evaluated_run, tmp_path):
    """Before: "3 runs" for one run, or a KeyError once `fdalign eval RUN --ood other=PATH` had run."""
    report = _report(evaluated_run, out=tmp_path / "rep")
    assert "1 runs (listed under Runs read)" in report
    assert [r[0] for r in _table(report, "Runs read")] == [str(evaluated_run)]
    train = json.loads((evaluated_run / "metrics.json").read_text())["metrics"]
    rows = _md_rows(report.split("## Paired")[0], "id, 2-shot")
    assert rows["fd-align"][1:3] == [
        f"{train['test']['fine-tuned']['top1']:.1f}",
        f"{train['shifted']['fine-tuned']['top1']:.1f}",
    ]
    assert "other" not in report.split("## Runs read")[0]  # the later evaluation's set is no training run's
    # named as an input itself, an evaluation folder is still no run
    report = _report(evaluated_run / "eval", evaluated_run / "eval-heads", evaluated_run, out=tmp_path / "rep2")
    assert [r[0] for r in _table(report, "Runs read")] == [str(evaluated_run)]


def test_report_without_out_never_writes_into_the_runs_it_reads(evaluated_run, tmp_path, capsys):
    """Before: `fdalign report RUN1 RUN2` replaced RUN1's own training report.md and added files there."""
    before = _files(evaluated_run)
    assert main(["report", str(evaluated_run), "--no-plots"]) == 2
    assert main(["report", str(evaluated_run), str(evaluated_run / "eval"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "give --out DIR" in err and str(evaluated_run) in err and "Traceback" not in err
    assert _files(evaluated_run) == before
    # with --out elsewhere the run is read and left as it was
    _report(evaluated_run, out=tmp_path / "rep")
    assert _files(evaluated_run) == before


def test_a_meta_train_run_is_not_written_into_either(tmp_path, capsys):
    """`fdalign report META_RUN` replaced the meta-train run's own report.md too."""
    run = tmp_path / "meta"
    run.mkdir()
    metrics = {
        "novel": {
            "5-way 1-shot": {
                m: {"proto": {"mean": v, "ci95": 1.0}} for m, v in (("zero-shot", 40.0), ("fine-tuned", 45.0))
            }
        }
    }
    (run / "metrics.json").write_text(
        json.dumps(
            {"kind": "episodes", "metrics": metrics, "config": {"data": "mini", "seed": 1, "k_shot": 1, "beta": 1.0}}
        )
    )
    (run / "config.yaml").write_text("data: mini\nseed: 1\n")
    (run / "report.md").write_text("the meta-train run's own report\n")
    before = _files(run)
    assert main(["report", str(run)]) == 2
    assert "give --out DIR" in capsys.readouterr().err and _files(run) == before
    assert main(["report", str(run), str(run), "--out", str(tmp_path / "rep")]) == 0  # read twice: one run
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "45.0 (1)" in report and "1 meta-training runs" in report


def test_paired_wins_ignore_float_noise(tmp_path):
    """An OOD mean ahead by 1e-9 prints as +0.0: it is no seed "higher" (item 5's rule in the report)."""
    for seed in (1, 2):
        fake_run(tmp_path, "w", 4, seed, "fine-tune", 50.0, ood={"sketch": 30.0})
    fake_run(tmp_path, "w", 4, 1, "fd-align", 50.0, ood={"sketch": 30.0 + 1e-9})
    fake_run(tmp_path, "w", 4, 2, "fd-align", 50.0, ood={"sketch": 30.1})
    report = _report(tmp_path, out=tmp_path / "rep")
    assert _md_rows(report.split("## Paired")[1], "w, 4-shot")["fd-align"][-1] == "1 of 2"
