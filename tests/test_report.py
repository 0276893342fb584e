"""`fdalign report`: its numbers recomputed independently from the runs' metrics.json / selection, the
paired differences, the published-number column, the mean over data sets, the formats and plots."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import yaml

from fdalign.cli import main
from fdalign.errors import FDAlignError

PNG = b"\x89PNG\r\n\x1a\n"


def _sweep_and_report(config: dict, root, formats: str):
    """``fdalign sweep`` then ``fdalign report`` of ``config`` in ``root`` (one torch thread, prompt cache in
    ``root``); returns the sweep's output folder."""
    from conftest import cli_session

    (root / "g.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = root / "out"
    with cli_session(root):
        assert main(["sweep", str(root / "g.yaml"), "--out", str(out), "--no-progress"]) == 0
        assert main(["report", str(out), "--format", formats]) == 0
    return out


@pytest.fixture(scope="module")
def sweep_out(tiny_openclip, tmp_path_factory):
    """A real sweep on rendered world data: 2 methods x 2 seeds x 2 shot counts, 1 epoch."""

    root = tmp_path_factory.mktemp("report")
    d = {
        "name": "r",
        "world": {
            "id_styles": ["photo"],
            "ood_styles": ["sketch", "dark"],
            "train_per_class": 3,
            "val_per_class": 2,
            "test_per_class": 2,
            "image_size": 32,
            "classes": ["circle", "square", "star"],
        },
        "datasets": [{"name": "w", "data": "{data_root}", "ood": "world"}],
        "shots": [1, 2],
        "seeds": [1, 2],
        "train": {
            "model": "tiny",
            "pretrained": str(tiny_openclip["checkpoint"]),
            "model_config": str(tiny_openclip["config"]),
            "epochs": 1,
            "batch_size": 4,
            "num_workers": 0,
            "templates": "tip7",
            "spc": False,
            "device": "cpu",
            "tensorboard": False,
            "lr": 3e-3,
            "wiseft_alphas": [0.0, 0.5, 1.0],
        },
        "methods": {"fine-tune": {"beta": 0.0}, "fd-align": {"beta": 1.0}},
    }
    out = _sweep_and_report(d, root, "md,csv,html")
    return out


def _expected(out):
    """Independently: {(shots, row): {seed: (id, ood mean, {set: top1})}} straight from the run files."""
    exp: dict = {}
    for status in out.glob("runs/*/k*/s*/*/status.json"):
        run = json.loads(status.read_text())["run"]
        doc = json.loads((status.parent / "metrics.json").read_text())
        chosen = json.loads((status.parent / "selection.json").read_text())["wiseft_alpha"]["chosen"]
        wise = {0.0: "zero-shot", 1.0: "fine-tuned"}.get(chosen, f"wiseft-{chosen:g}")
        m = doc["metrics"]
        for row, model in (
            (run["method"], "fine-tuned"),
            (f"wise-ft of {run['method']}", wise),
            (f"zero-shot via {run['method']}", "zero-shot"),
        ):
            sets = {s: m[s][model]["top1"] for s in m}
            exp.setdefault((run["shots"], row), {})[run["seed"]] = (
                sets["test"],
                (sets["sketch"] + sets["dark"]) / 2,
                sets,
            )
    return exp


def _md_rows(report: str, title: str) -> dict[str, list[str]]:
    block = report.split(f"**{title}**")[1].split("\n\n**")[0].split("\n## ")[0]
    rows = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_table_is_mean_and_std_over_seeds_of_the_runs_metrics(sweep_out):
    exp = _expected(sweep_out)
    report = (sweep_out / "report.md").read_text()
    for k in (1, 2):
        rows = _md_rows(report.split("## Paired")[0], f"w, {k}-shot")
        assert list(rows) == ["zero-shot", "fine-tune", "fd-align", "wise-ft of fine-tune", "wise-ft of fd-align"]
        for row in rows:
            src = exp[(k, "zero-shot via fine-tune" if row == "zero-shot" else row)]
            seeds = sorted(src)
            cols = [
                [src[s][0] for s in seeds],
                [src[s][1] for s in seeds],
                [src[s][2]["sketch"] for s in seeds],
                [src[s][2]["dark"] for s in seeds],
            ]
            want = [str(len(seeds))] + [f"{statistics.fmean(v):.1f} ± {statistics.stdev(v):.1f}" for v in cols]
            if row.startswith("wise-ft of "):  # the WiSE-FT column: each seed's weight, from its selection.json
                sel = [sweep_out / f"runs/w/k{k}/s{s}" / row[len("wise-ft of ") :] / "selection.json" for s in seeds]
                alphas = [f"{json.loads(p.read_text())['wiseft_alpha']['chosen']:g}" for p in sel]
                want.append(alphas[0] if len(set(alphas)) == 1 else " / ".join(alphas))
            else:
                want.append("")
            assert rows[row] == want, (k, row)


def test_zero_shot_is_the_same_in_every_run(sweep_out):
    exp = _expected(sweep_out)
    for k in (1, 2):
        assert exp[(k, "zero-shot via fine-tune")] == exp[(k, "zero-shot via fd-align")]


def test_paired_differences_are_per_seed(sweep_out):
    exp = _expected(sweep_out)
    summary = json.loads((sweep_out / "summary.json").read_text())
    report = (sweep_out / "report.md").read_text().split("## Paired")[1]
    for g in summary["groups"]:
        k = g["shots"]
        ref = exp[(k, "fine-tune")]
        for row in ("fd-align", "wise-ft of fd-align"):
            d_id = [exp[(k, row)][s][0] - ref[s][0] for s in (1, 2)]
            d_ood = [exp[(k, row)][s][1] - ref[s][1] for s in (1, 2)]
            got = g["paired"][row]
            assert got["id"]["mean"] == pytest.approx(statistics.fmean(d_id))
            assert got["ood_mean"]["std"] == pytest.approx(statistics.stdev(d_ood))
            assert got["ood_wins"] == sum(round(x, 6) >= 0.05 for x in d_ood)  # ahead at the printed 0.1
            cells = _md_rows(report, f"w, {k}-shot")[row]
            assert cells[1] == f"{statistics.fmean(d_id):+.1f} ± {statistics.stdev(d_id):.1f}"
        assert "fine-tune" not in g["paired"]


def test_formats_and_plots(sweep_out):
    rows = list(csv.DictReader((sweep_out / "report.csv").open()))
    exp = _expected(sweep_out)
    r = next(r for r in rows if r["shots"] == "2" and r["method"] == "fd-align" and r["metric"] == "dark")
    assert float(r["mean"]) == pytest.approx(
        statistics.fmean(exp[(2, "fd-align")][s][2]["dark"] for s in (1, 2)), abs=1e-3
    )
    html = (sweep_out / "report.html").read_text()
    assert "<table>" in html and "wise-ft of fd-align" in html
    report = (sweep_out / "report.md").read_text()
    for name in (
        "accuracy_vs_shots.png",
        "id_ood_w_k1.png",
        "id_ood_w_k2.png",
        "training_w_k2.png",
        "accuracy_by_set_w_k1.png",
        "tsne_w_k1.png",
        "spurious_w_k2.png",
    ):
        assert (sweep_out / name).read_bytes()[:8] == PNG and f"]({name})" in report and f"src='{name}'" in html
    assert "## Environment" in report and "torch:" in report and "## Split hashes" in report
    hashes = json.loads((sweep_out / "runs/w/k2/s1/fd-align/metrics.json").read_text())["hashes"]
    assert hashes["train"].split(":")[-1][:12] in report


# ----------------------------------------------------------------------------------------------
# fabricated runs: exact numbers for the published column and the mean over data sets


def fake_run(root, dataset, shots, seed, method, top1, model="ViT-B-32", pretrained="openai", ood=None, **config):
    d = root / "runs" / dataset / f"k{shots}" / f"s{seed}" / method
    d.mkdir(parents=True)
    sets = {"test": top1} | (ood or {})
    metrics = {s: {"zero-shot": {"top1": v - 5, "n": 10}, "fine-tuned": {"top1": v, "n": 10}} for s, v in sets.items()}
    doc = {
        "format": "fdalign-metrics/1",
        "metrics": metrics,
        "roles": {"test": "test"} | {s: "ood" for s in ood or {}},
        "config": {
            "model": model,
            "pretrained": pretrained,
            "dataset_name": dataset,
            "shots": shots,
            "seed": seed,
            "beta": 0.0 if method == "fine-tune" else 20.0,
            "mode": "fdalign",
            "device": "cuda",
            **config,
        },
        "selection": {"wiseft_alpha": {"chosen": 1.0}},
        "hashes": {"train": f"content:{seed}{shots}"},
    }
    (d / "metrics.json").write_text(json.dumps(doc))
    (d / "config.yaml").write_text(yaml.safe_dump(doc["config"]))
    return d


def test_published_column_for_imagenet_16_shot(tmp_path, capsys):
    for seed, v in ((1, 60.0), (2, 62.0), (3, 64.0)):
        fake_run(tmp_path, "imagenet", 16, seed, "fine-tune", v)
    assert main(["report", str(tmp_path), "--no-plots", "--out", str(tmp_path)]) == 0
    rows = _md_rows((tmp_path / "report.md").read_text(), "imagenet, 16-shot")
    # zero-shot is fine-tuned - 5: 55, 57, 59 -> mean 57.0; REFERENCE.md: CLIP ViT-B/32 16-shot ImageNet 63.34
    assert rows["zero-shot"][-2:] == ["63.34", f"{57.0 - 63.34:+.1f}"]
    assert rows["fine-tune"][-2:] == ["", ""]  # the paper gives no plain fine-tuning number for ImageNet
    # another model: no comparison at all
    other = tmp_path / "other"
    for seed in (1, 2):
        fake_run(other, "imagenet", 16, seed, "fine-tune", 60.0, model="ViT-B-16")
    assert main(["report", str(other), "--no-plots", "--out", str(other)]) == 0
    assert "published" not in (other / "report.md").read_text().split("## Where")[0]


def test_mean_over_the_11_coop_data_sets_against_the_spc_ablation(tmp_path):
    names = [
        "imagenet",
        "caltech101",
        "oxford_pets",
        "stanford_cars",
        "flowers102",
        "food101",
        "fgvc_aircraft",
        "sun397",
        "dtd",
        "eurosat",
        "ucf101",
    ]
    for i, ds in enumerate(names):
        for seed in (1, 2):
            fake_run(tmp_path, ds, 4, seed, "fine-tune", 60.0 + i + seed)
            fake_run(tmp_path, ds, 4, seed, "fd-align", 61.0 + i + 2 * seed)
    assert main(["report", str(tmp_path), "--no-plots", "--out", str(tmp_path)]) == 0
    rows = _md_rows((tmp_path / "report.md").read_text(), "mean of 11 data sets, 4-shot")
    # per seed the mean over data sets of 60 + i + seed is 65 + seed -> 66, 67; of 61 + i + 2 seed -> 68, 70
    assert rows["fine-tune"][1] == f"66.5 ± {statistics.stdev([66, 67]):.1f}"
    assert rows["fd-align"][1] == f"69.0 ± {statistics.stdev([68, 70]):.1f}"
    # published 4-shot: full FT 68.10, FD-Align + SPC 68.63
    assert rows["fine-tune"][-2:] == ["68.10", f"{66.5 - 68.10:+.1f}"]
    assert rows["fd-align"][-2:] == ["68.63", f"{69.0 - 68.63:+.1f}"]


def test_paired_differences_by_hand(tmp_path):
    ood = lambda a, b: {"sketch": a, "dark": b}  # noqa: E731
    # seed 1: fine-tune ID 50, OOD (40+30)/2 = 35; fd-align ID 48, OOD (46+40)/2 = 43 -> diffs -2, +8
    # seed 2: fine-tune ID 52, OOD (44+30)/2 = 37; fd-align ID 53, OOD (41+31)/2 = 36 -> diffs +1, -1
    fake_run(tmp_path, "w", 4, 1, "fine-tune", 50.0, ood=ood(40.0, 30.0))
    fake_run(tmp_path, "w", 4, 1, "fd-align", 48.0, ood=ood(46.0, 40.0))
    fake_run(tmp_path, "w", 4, 2, "fine-tune", 52.0, ood=ood(44.0, 30.0))
    fake_run(tmp_path, "w", 4, 2, "fd-align", 53.0, ood=ood(41.0, 31.0))
    assert main(["report", str(tmp_path), "--no-plots", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text().split("## Paired")[1]
    row = _md_rows(report, "w, 4-shot")["fd-align"]
    assert row == ["2", f"-0.5 ± {statistics.stdev([-2, 1]):.1f}", f"+3.5 ± {statistics.stdev([8, -1]):.1f}", "1 of 2"]
    table = _md_rows((tmp_path / "report.md").read_text(), "w, 4-shot")
    assert table["fine-tune"][2] == f"36.0 ± {statistics.stdev([35, 37]):.1f}"  # OOD mean column


def test_no_runs_is_a_user_error(tmp_path):
    with pytest.raises(FDAlignError, match="no finished training runs"):
        from fdalign.experiments.report import write_report

        write_report([tmp_path])
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_cache_heads_in_a_sweep_give_the_papers_rows(tiny_openclip, tmp_path):
    """`heads: [tip]`: every run is followed by `fdalign eval RUN --heads tip`; the report shows "Tip" (zero-shot
    CLIP's encoder) and "Tip + <method>" rows whose numbers are the runs' eval-heads/metrics.json."""

    d = {
        "name": "h",
        "world": {
            "id_styles": ["photo"],
            "ood_styles": ["sketch"],
            "train_per_class": 3,
            "val_per_class": 2,
            "test_per_class": 2,
            "image_size": 32,
            "classes": ["circle", "square", "star"],
        },
        "datasets": [{"name": "w", "data": "{data_root}", "ood": "world"}],
        "shots": [2],
        "seeds": [1, 2],
        "heads": ["tip"],
        "heads_preset": "authors",
        "train": {
            "model": "tiny",
            "pretrained": str(tiny_openclip["checkpoint"]),
            "model_config": str(tiny_openclip["config"]),
            "epochs": 1,
            "batch_size": 4,
            "num_workers": 0,
            "templates": "tip7",
            "spc": False,
            "device": "cpu",
            "tensorboard": False,
            "lr": 3e-3,
            "wiseft_alphas": [0.0, 1.0],
        },
        "methods": {"fd-align": {"beta": 1.0}},
    }
    out = _sweep_and_report(d, tmp_path, "md")
    want: dict = {}
    for seed in (1, 2):
        doc = json.loads((out / "runs/w/k2" / f"s{seed}" / "fd-align/eval-heads/metrics.json").read_text())
        heads = doc["metrics"]
        assert set(heads["test"]) == {"Tip", "Tip + FD-Align"}
        assert doc["selection"]["search grids"].startswith("authors (")  # heads_preset reached `fdalign eval`
        for row, model in (("Tip", "Tip"), ("Tip + fd-align", "Tip + FD-Align")):
            want.setdefault(row, []).append(heads["test"][model]["top1"])
    rows = _md_rows((out / "report.md").read_text().split("## Paired")[0], "w, 2-shot")
    assert list(rows)[-2:] == ["Tip", "Tip + fd-align"]
    for row, ids in want.items():
        assert rows[row][1] == f"{statistics.fmean(ids):.1f} ± {statistics.stdev(ids):.1f}", row
    with pytest.raises(FDAlignError, match="heads lists 'lora'"):
        from fdalign.experiments.sweep import SweepConfig

        SweepConfig.from_dict({**d, "heads": ["lora"]})
    with pytest.raises(FDAlignError, match="heads_preset 'paper'"):
        SweepConfig.from_dict({**d, "heads_preset": "paper"})


def test_an_episodes_sweep_runs_meta_train_and_reports_every_target(tiny_openclip, tmp_path):
    """protocol: episodes — each cell is `fdalign meta-train`; the report's episode table is the mean over seeds
    of each run's mean episode accuracy, per method, head, target and setting."""
    from _synth import make_imagefolder
    from test_episodes import write_class_splits

    write_class_splits(
        tmp_path / "mini",
        {
            "base": ["red", "green", "blue", "yellow"],
            "val": ["cyan", "pink", "grey"],
            "novel": ["black", "white", "orange"],
        },
        per_class=4,
    )
    t1 = make_imagefolder(tmp_path / "t1", ["oak", "pine", "elm"], n_train=0, n_test=4, seed=1) / "test"
    d = {
        "name": "e",
        "protocol": "episodes",
        "datasets": [{"name": "mini", "data": str(tmp_path / "mini"), "ood": [f"trees={t1}"]}],
        "shots": [1],
        "seeds": [1, 2],
        "train": {
            "model": "tiny",
            "pretrained": str(tiny_openclip["checkpoint"]),
            "model_config": str(tiny_openclip["config"]),
            "templates": "tip7",
            "n_way": 3,
            "q_query": 2,
            "episodes_per_step": 2,
            "episodes_per_epoch": 4,
            "epochs": 1,
            "val_episodes": 3,
            "spc_keep": 5,
            "spc_k": 2,
            "num_workers": 0,
            "device": "cpu",
            "lr": 1e-2,
            "tensorboard": False,
            "test_episodes": 20,
            "test_shots": [1],
            "eval_batch_size": 64,
        },
        "methods": {"fine-tune": {"beta": 0.0}, "fd-align": {"beta": 1.0}},
    }
    out = _sweep_and_report(d, tmp_path, "md")
    runs = {
        (m, s): json.loads((out / "runs/mini/k1" / f"s{s}" / m / "metrics.json").read_text())["metrics"]
        for m in ("fine-tune", "fd-align")
        for s in (1, 2)
    }
    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:2] == ["method", "head"] and "trees 3-way 1-shot" in header and "novel 3-way 1-shot" in header
    rows = {(c[0], c[1]): c[2:] for c in ([x.strip() for x in line.strip("|").split("|")] for line in table[1:])}
    for label, method, model in (
        ("zero-shot", "fine-tune", "zero-shot"),
        ("fine-tune", "fine-tune", "fine-tuned"),
        ("fd-align", "fd-align", "fine-tuned"),
    ):
        for h in ("proto", "text", "combined"):
            for col, name in enumerate(header[2:]):
                target, setting = name.split(" ", 1)
                vals = [runs[(method, s)][target][setting][model][h]["mean"] for s in (1, 2)]
                want = f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f} (2)"
                assert rows[(label, h)][col] == want, (label, h, name)


def _strict_json(path):
    """The file as JSON that other tools read: NaN / Infinity are not JSON."""
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))


def test_heads_evaluated_without_ood_sets_show_their_id_numbers(tmp_path):
    """eval-heads/metrics.json with the test set only (no OOD sets): the Tip / APE rows show their ID top-1
    from that file and "–" where they were not evaluated, never "0 | –"; summary.json stays valid JSON."""
    heads = {
        1: {"Tip": 42.0, "APE": 52.0, "Tip + FD-Align": 55.0},
        2: {"Tip": 43.4, "APE": 52.2, "Tip + FD-Align": 57.0},
    }
    for seed in (1, 2):
        fake_run(tmp_path, "w", 4, seed, "fine-tune", 50.0 + seed, ood={"sketch": 40.0})
        d = fake_run(tmp_path, "w", 4, seed, "fd-align", 53.0 + seed, ood={"sketch": 44.0})
        (d / "eval-heads").mkdir()
        metrics = {"test": {m: {"top1": v, "n": 10} for m, v in heads[seed].items()}}
        (d / "eval-heads" / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    assert main(["report", str(tmp_path), "--no-plots", "--out", str(tmp_path / "rep"), "--format", "md,csv"]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    rows = _md_rows(report.split("## Paired")[0], "w, 4-shot")
    for row, model in (("Tip", "Tip"), ("APE", "APE"), ("Tip + fd-align", "Tip + FD-Align")):
        vals = [heads[s][model] for s in (1, 2)]
        assert rows[row] == ["2", f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f}", "–", "–", ""], row
    assert rows["fd-align"] == ["2", f"54.5 ± {statistics.stdev([54, 55]):.1f}", "44.0 ± 0.0", "44.0 ± 0.0", ""]
    paired = _md_rows(report.split("## Paired")[1], "w, 4-shot")
    assert paired["Tip + fd-align"] == ["2", f"+4.5 ± {statistics.stdev([55 - 51, 57 - 52]):.1f}", "–", "–"]
    summary = _strict_json(tmp_path / "rep" / "summary.json")
    tip = summary["groups"][0]["rows"]["Tip"]
    assert tip["id"]["values"] == [42.0, 43.4] and "ood_mean" not in tip and "sketch" not in tip
    with open(tmp_path / "rep" / "report.csv") as f:
        got = {(r["method"], r["metric"]): r["mean"] for r in csv.DictReader(f)}
    assert got[("APE", "test")] == "52.1" and ("APE", "sketch") not in got
    # the figures place the head rows where they were evaluated (the ID bar), and nowhere else
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "accuracy_by_set_w_k4.png").read_bytes()[:8] == PNG
    from fdalign.experiments.report import json_safe

    assert json_safe({"a": [float("nan"), 1.5, {"b": float("-inf")}], "c": "NaN"}) == {
        "a": [None, 1.5, {"b": None}],
        "c": "NaN",
    }


def fake_b2n_run(root, dataset, seed, method, base, novel, model="ViT-B-32"):
    """A base-to-novel run: `test` (base classes) and `novel`; zero-shot 5 points below on both."""
    d = fake_run(root, dataset, 4, seed, method, base, model=model, base_classes="first-half")
    doc = json.loads((d / "metrics.json").read_text())
    doc["metrics"]["novel"] = {"zero-shot": {"top1": novel - 5, "n": 10}, "fine-tuned": {"top1": novel, "n": 10}}
    doc["roles"]["novel"] = "novel"
    (d / "metrics.json").write_text(json.dumps(doc))
    return d


def test_base_to_novel_csv_has_base_novel_and_hm_and_no_stray_text(tmp_path):
    """report.csv holds the base / novel / HM rows of the base-to-novel table; the CoCoOp source is said only
    where its numbers are shown (11 CoOp data sets, ViT-B-16), and no sentence speaks of an OOD column that
    no table has."""
    for seed, (b, n) in ((1, (80.0, 60.0)), (2, (84.0, 64.0))):
        fake_b2n_run(tmp_path / "one", "eurosat", seed, "fine-tune", b, n)
        fake_b2n_run(tmp_path / "one", "eurosat", seed, "fd-align", b + 1, n + 3)
    assert (
        main(["report", str(tmp_path / "one"), "--no-plots", "--out", str(tmp_path / "r1"), "--format", "md,csv"]) == 0
    )
    report = (tmp_path / "r1" / "report.md").read_text()
    assert "CoCoOp" not in report.replace("as CoCoOp reports it", "") and "Published:" not in report
    assert "OOD mean" not in report and "OOD column" not in report
    with open(tmp_path / "r1" / "report.csv") as f:
        got = {(r["method"], r["metric"]): (r["seeds"], r["mean"], r["std"]) for r in csv.DictReader(f)}
    assert got[("fd-align", "base")] == ("2", "83.0", str(round(statistics.stdev([81, 85]), 4)))
    assert got[("fd-align", "novel")] == ("2", "65.0", str(round(statistics.stdev([63, 67]), 4)))
    assert got[("fd-align", "HM")] == ("2", str(round(2 * 83 * 65 / (83 + 65), 4)), "")
    assert float(got[("zero-shot", "HM")][1]) == pytest.approx(2 * 77 * 57 / (77 + 57), abs=1e-4)
    # the 11 CoOp data sets with CoCoOp's model: the published average is shown, in the table and the CSV
    names = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101", "fgvc_aircraft"]
    names += ["sun397", "dtd", "eurosat", "ucf101"]
    for i, ds in enumerate(names):
        fake_b2n_run(tmp_path / "all", ds, 1, "fine-tune", 70.0 + i, 75.0 + i, model="ViT-B-16")
    assert (
        main(["report", str(tmp_path / "all"), "--no-plots", "--out", str(tmp_path / "r2"), "--format", "md,csv"]) == 0
    )
    assert "Published: Zhou et al." in (tmp_path / "r2" / "report.md").read_text()
    with open(tmp_path / "r2" / "report.csv") as f:
        avg = [
            r for r in csv.DictReader(f) if r["data set"] == "average of 11 data sets" and r["method"] == "zero-shot"
        ]
    # zero-shot: base 65 + i, novel 70 + i, averaged over i = 0..10: 70 and 75; CoCoOp's 69.34 / 74.22 / 71.70
    assert [(r["metric"], r["mean"], r["published"]) for r in avg] == [
        ("base", "70.0", "69.34"),
        ("novel", "75.0", "74.22"),
        ("HM", str(round(2 * 70 * 75 / 145, 4)), "71.7"),
    ]
    assert float(avg[2]["ours_minus_published"]) == pytest.approx(2 * 70 * 75 / 145 - 71.70, abs=1e-4)


def test_shared_settings_overrides_warm_up_and_chosen_alpha_are_shown(tmp_path):
    """What every run shares (a sweep's `--set epochs=1`) is listed, a warm-up as long as the run is warned
    about, and the WiSE-FT mixing weight each seed chose on val is in the table and the CSV."""
    sweep = tmp_path / "sw"
    for seed, chosen in ((1, 1.0), (2, 0.5)):
        for method in ("fine-tune", "fd-align"):
            d = fake_run(sweep, "w", 4, seed, method, 50.0 + seed, epochs=1, warmup_epochs=1.0, lr=1e-5)
            doc = json.loads((d / "metrics.json").read_text())
            for s in doc["metrics"].values():
                s["wiseft-0.5"] = {"top1": 40.0 + seed, "n": 10}
            doc["selection"]["wiseft_alpha"]["chosen"] = chosen
            (d / "metrics.json").write_text(json.dumps(doc))
    methods = {"fine-tune": {"beta": 0.0}, "fd-align": {"beta": 20.0}}
    (sweep / "sweep.json").write_text(
        json.dumps({"config": {"name": "s", "methods": methods, "overrides": {"epochs": 1}}, "runs": []})
    )
    assert main(["report", str(sweep), "--no-plots", "--out", str(tmp_path / "rep"), "--format", "md,csv"]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    intro = report.split("## Results")[0]
    assert f"**Every run of {sweep} was made with `--set epochs=1`**" in intro
    assert "**Warning: in 4 of 4 runs the LR warm-up (warmup_epochs = 1) lasts the whole run (epochs = 1)" in intro
    shared = report.split("## Settings all runs share")[1].split("\n## ")[0]
    for line in ("| epochs | 1 |", "| lr | 1e-05 |", "| model | ViT-B-32 |", "| warmup_epochs | 1.0 |"):
        assert line in shared, shared
    assert "| beta |" not in shared  # it differs between the methods: the runs table says so
    header = next(line for line in report.splitlines() if line.startswith("| method | seeds"))
    assert header.endswith("| WiSE-FT α (val) |"), header
    rows = _md_rows(report.split("## Paired")[0], "w, 4-shot")
    assert (
        rows["wise-ft of fd-align"][-1] == "1 / 0.5"
        and rows["wise-ft of fd-align"][1] == f"46.5 ± {statistics.stdev([51, 42]):.1f}"
    )
    assert rows["fd-align"][-1] == "" and rows["zero-shot"][-1] == ""
    with open(tmp_path / "rep" / "report.csv") as f:
        alpha = [r for r in csv.DictReader(f) if r["metric"] == "wiseft_alpha"]
    assert [(r["method"], r["mean"], r["seeds"]) for r in alpha] == [
        ("wise-ft of fine-tune", "0.75", "2"),
        ("wise-ft of fd-align", "0.75", "2"),
    ]
