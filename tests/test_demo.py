"""`fdalign demo --quick` end to end on the tiny random open_clip model, and the demo's bookkeeping.

The demo is world render + the demo sweep preset + the report; the engine's own numbers are tested
in test_sweep.py / test_report.py, so here: the demo's files, its per-seed numbers against the runs'
metrics.json, the WiSE-FT rows, the options and the repeat command."""

from __future__ import annotations

import json
import re
import statistics

import pytest

from fdalign.cli import build_parser, main
from fdalign.demo import METHODS, DemoConfig, demo_command, run_demo, sweep_config
from fdalign.errors import FDAlignError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_args(tiny, out, *extra):
    return [
        "demo",
        "--quick",
        "--out",
        str(out),
        "--model",
        "tiny",
        "--pretrained",
        str(tiny["checkpoint"]),
        "--model-config",
        str(tiny["config"]),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One prompt-feature cache for the module: the tiny model's prototypes are encoded once."""
    return tmp_path_factory.mktemp("demo_cache")


@pytest.fixture(scope="module")
def quick_run(tiny_openclip, tmp_path_factory, cache_dir):
    """One ``fdalign demo --quick`` on the tiny model: (out dir, metrics.json, report.md text)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("FDALIGN_CACHE", str(cache_dir))
    try:
        # --selection best: the default keeps the last epoch, and the val-selection record is what is tested here
        assert main(_tiny_args(tiny_openclip, out, "--epochs", "2", "--selection", "best")) == 0
    finally:
        mp.undo()
    doc = json.loads((out / "metrics.json").read_text())
    return out, doc, (out / "report.md").read_text()


def _table_rows(report: str) -> dict[str, list[str]]:
    """The first markdown table of the report: method -> its cells."""
    rows = {}
    for line in report.split("## Results")[1].split("\n## ")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_quick_run_writes_report_plots_and_metrics(quick_run):
    out, doc, report = quick_run
    for name in ("accuracy_by_set_world_k2.png", "id_ood_world_k2.png", "training_world_k2.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC and f"]({name})" in report
    assert list(_table_rows(report)) == list(METHODS)
    assert doc["seeds"] == [1, 2] and doc["config"]["quick"] and doc["config"]["epochs"] == 2  # explicit flag wins
    assert doc["ood_styles"] == ["sketch", "blurry"]
    for run in ("s1/fine-tune", "s2/fd-align"):
        assert (out / "runs" / "world" / "k2" / run / "log.csv").is_file()
        # the demo keeps each run's selected model, not its resume state
        assert (out / "runs" / "world" / "k2" / run / "model").is_dir()
        assert not (out / "runs" / "world" / "k2" / run / "checkpoint").exists()
    assert (out / "world" / "world.json").is_file() and "## What happened" in report
    # one line names the best method on the ID-OOD frontier among those the demo ran (issue 27)
    (best,) = [ln for ln in report.split("## Results")[1].splitlines() if ln.startswith("Best on the ID–OOD frontier")]
    assert any(f"**{m}**" in best or f"**wise-ft of {m}**" in best for m in METHODS)
    # no temporary files left behind by the atomic writes
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_per_seed_numbers_are_the_runs_metrics(quick_run):
    out, doc, report = quick_run
    for s in doc["seeds"]:
        for method in ("fine-tune", "fd-align"):
            run = json.loads((out / "runs" / "world" / "k2" / f"s{s}" / method / "metrics.json").read_text())
            m = run["metrics"]
            alpha = run["selection"]["wiseft_alpha"]["chosen"]
            wise = {0.0: "zero-shot", 1.0: "fine-tuned"}.get(alpha, f"wiseft-{alpha:g}")
            for row, model in ((method, "fine-tuned"), (f"wise-ft of {method}", wise), ("zero-shot", "zero-shot")):
                r = doc["per_seed"][str(s)][row]
                assert r["id"] == m["test"][model]["top1"]
                assert r["styles"] == {
                    "jpeg corrupted": m["test"][model]["top1"],
                    "sketch": m["sketch"][model]["top1"],
                    "blurry": m["blurry"][model]["top1"],
                }
                assert r["ood_mean"] == pytest.approx((m["sketch"][model]["top1"] + m["blurry"][model]["top1"]) / 2)
    rows = _table_rows(report)
    for row in METHODS:
        vals = [doc["per_seed"][str(s)][row]["id"] for s in doc["seeds"]]
        assert rows[row][:2] == ["2", f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f}"], row
    # zero-shot trains nothing and the test sets are fixed: identical over seeds
    assert doc["summary"]["zero-shot"]["id"]["std"] == 0


def test_wiseft_alpha_chosen_on_val(quick_run):
    _, doc, _ = quick_run
    alphas = doc["config"]["wiseft_alphas"]
    assert alphas == [0.0, 0.5, 1.0]
    for s in doc["seeds"]:
        for method in ("fine-tune", "fd-align"):
            sel = doc["selection"][str(s)][method]
            w = sel["wiseft_alpha"]
            assert w["on"].startswith("val") and "test" not in w["on"]
            assert [float(a) for a in w["scores"]] == alphas
            best = max(w["scores"].values())
            first_best = next(float(a) for a, v in w["scores"].items() if v == best)  # ties: first listed
            assert w["chosen"] == first_best and w["score"] == best
            e = sel["epoch"]
            assert e["on"].startswith("val") and e["chosen"] in (1, 2)
            assert e["score"] == max(e["scores"].values())


def test_demo_defaults_are_the_shipped_sweep_preset():
    from fdalign.experiments.sweep import load_sweep_config

    assert sweep_config(DemoConfig()).to_dict() == load_sweep_config("demo").to_dict()
    quick = sweep_config(DemoConfig(quick=True).resolved())
    assert quick.seeds == [1, 2] and quick.shots == [2] and quick.world["ood_styles"] == ["sketch", "blurry"]
    assert quick.methods == {"fine-tune": {"beta": 0.0}, "fd-align": {"beta": 20.0}}


def test_wiseft_alpha_one_is_the_fine_tuned_model(tiny_openclip, tmp_path, monkeypatch, cache_dir):
    """Only alpha 1 allowed: WiSE-FT must score exactly as the fine-tuned model, which differs from zero-shot."""
    monkeypatch.setenv("FDALIGN_CACHE", str(cache_dir))
    cfg = DemoConfig(
        out=str(tmp_path / "a1"),
        quick=True,
        seeds=1,
        model="tiny",
        pretrained=str(tiny_openclip["checkpoint"]),
        model_config=str(tiny_openclip["config"]),
        device="cpu",
        wiseft_alphas=(1.0,),
        ood_styles=("sketch",),
        lr=1e-3,
        progress=False,
        threads=1,
    )
    res = run_demo(cfg)
    r = res.per_seed[1]
    assert r["fine-tune"] != r["zero-shot"]  # else the next line could not tell the two apart
    assert r["wise-ft of fine-tune"] == r["fine-tune"] and r["wise-ft of fd-align"] == r["fd-align"]
    assert res.selection[1]["fine-tune"]["wiseft_alpha"]["chosen"] == 1.0


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for f in DemoConfig.__dataclass_fields__:
        assert f"--{f.replace('_', '-')}" in text, f
    options = text.split("options:")[1]
    n_opts = len(re.findall(r"(?:^| )--[a-z]", options.replace("--no-", "")))
    assert options.count("(default:") >= len(DemoConfig.__dataclass_fields__)
    assert n_opts >= len(DemoConfig.__dataclass_fields__)


def test_repeat_command_parses_back_to_the_same_config():
    cfg = DemoConfig(out="x y", seeds=2, lr=3e-5, ood_styles=("jpeg corrupted", "sketch"), spc=False, quick=True)
    import shlex

    argv = shlex.split(demo_command(cfg))[1:]
    args = build_parser().parse_args(argv)
    for f in DemoConfig.__dataclass_fields__:
        if f == "progress":
            continue
        got = getattr(args, f)
        assert (tuple(got) if isinstance(got, list) else got) == getattr(cfg, f), f


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(id_style="photograph"), ["--id-style", "photograph", "photo"]),
        (dict(id_style="photo", ood_styles=("photo", "sketch")), ["--ood-styles", "ID style"]),
        (dict(ood_styles=("skecth",)), ["--ood-styles", "skecth"]),
        (dict(beta=0.0), ["--beta", "fine-tune"]),
        (dict(wiseft_alphas=(1.5,)), ["--wiseft-alphas"]),
        (dict(seeds=0), ["--seeds"]),
        (dict(selection="worst"), ["--selection", "worst", "last"]),
    ],
)
def test_bad_options_are_user_errors(kw, words):
    with pytest.raises(FDAlignError) as e:
        DemoConfig(**kw).resolved()
    assert all(w in str(e.value) for w in words)


def test_missing_builtin_model_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FDALIGN_ASSETS", str(tmp_path / "no-assets"))
    assert main(["demo", "--quick", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "fdalign-world" in err and "Traceback" not in err


def test_verdict_by_hand():
    """Paired differences and the plain-words lines, on numbers worked out by hand."""
    from fdalign.demo import verdict

    def r(i, o):
        return {"id": i, "ood_mean": o, "styles": {}}

    per_seed = {
        1: {"zero-shot": r(40, 60), "fine-tune": r(50, 50), "fd-align": r(48, 58), "wise-ft of fine-tune": r(52, 61)},
        2: {"zero-shot": r(40, 60), "fine-tune": r(46, 52), "fd-align": r(46, 56), "wise-ft of fine-tune": r(47, 60)},
    }
    lines = verdict(per_seed, {})
    # fd-align - fine-tune: OOD diffs 8 and 4 -> mean 6, sample std 2.8; ID diffs -2 and 0 -> -1, std 1.4
    assert "**fd-align − fine-tune**: OOD mean +6.0 ± 2.8 points, ID -1.0 ± 1.4 points" in lines[0]
    assert "OOD higher in 2 of 2 seeds" in lines[0]
    assert any("FD-Align kept more OOD accuracy than plain fine-tuning in every seed" in x for x in lines)
    assert any("WiSE-FT of the plain fine-tuned model was at least as good as FD-Align" in x for x in lines)
    per_seed[2]["fd-align"] = r(46, 40)  # now behind fine-tune OOD on average
    lines = verdict(per_seed, {})
    assert any("did **not** beat plain fine-tuning OOD" in x for x in lines)


def test_verdict_calls_float_noise_a_tie_not_a_win():
    """`--quick` once said "FD-Align had the higher ID" for a difference of 1.5e-6 points. Differences
    that print as +0.0 are ties: no win, no "higher"; one that prints as +0.1 still counts."""
    from fdalign.demo import verdict

    def r(i, o):
        return {"id": i, "ood_mean": o, "styles": {}}

    noise = 1.5e-6
    per_seed = {
        s: {
            "zero-shot": r(40, 60),
            "fine-tune": r(50, 50),
            "wise-ft of fine-tune": r(52, 61),
            "fd-align": r(52 + noise, 50 + noise),
        }
        for s in (1, 2)
    }
    lines = verdict(per_seed, {})
    assert not any("FD-Align had the higher ID" in x for x in lines)
    assert any("WiSE-FT of the plain fine-tuned model was at least as good as FD-Align on both" in x for x in lines)
    assert any("did **not** beat plain fine-tuning OOD" in x for x in lines)
    assert "OOD higher in 0 of 2 seeds" in lines[0]
    for s in (1, 2):  # 0.1 points, as printed, is a difference
        per_seed[s]["fd-align"] = r(52.1, 50.1)
    lines = verdict(per_seed, {})
    assert any("FD-Align had the higher ID" in x for x in lines)
    assert "OOD higher in 2 of 2 seeds" in lines[0]


def test_one_seed_summary_prints_no_spread():
    from fdalign.demo import summary_table

    one = {"mean": 37.5, "std": 0.0, "values": [37.5]}
    two = {"mean": 36.0, "std": 2.1213, "values": [34.5, 37.5]}
    table = summary_table(
        {
            "zero-shot": {"id": one, "ood_mean": one, "sketch": one},
            "fine-tune": {"id": two, "ood_mean": two, "sketch": two},
        },
        "photo",
        ["sketch"],
    )
    assert "| zero-shot | 37.5 | 37.5 | 37.5 |" in table and "| fine-tune | 36.0 ± 2.1 |" in table


def test_quick_help_promises_minutes_not_seconds(capsys):
    """`--quick` took 85-131 s on 2 cores, but its help promised "a seconds-long smoke run"."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    quick = text.split("options:")[1].split("--quick ")[1].split(" --progress")[0]
    assert "seconds" not in quick and "minutes on 2 CPU cores" in quick
