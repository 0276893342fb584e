"""The report's robust fine-tuning comparison (experiments/compare.py) on hand-made runs: val_choice rows chosen on
val only, paired differences, the frontier and the cost per step, each against numbers worked out here."""

from __future__ import annotations

from pathlib import Path

import pytest

from fdalign.experiments import compare
from fdalign.experiments.report import build_groups
from fdalign.experiments.runs import RunRecord, method_label


def _run(method, seed, id_, ood, wise=None, val=None, log=None, cfg=None):
    """A finished run: fine-tuned and WiSE-FT 0.5 top-1 on test and one OOD set; zero-shot 40 / 60."""
    wise = wise or (id_ + 1, ood + 1)
    metrics = {
        "test": {"zero-shot": {"top1": 40.0}, "fine-tuned": {"top1": id_}, "wiseft-0.5": {"top1": wise[0]}},
        "ood": {"zero-shot": {"top1": 60.0}, "fine-tuned": {"top1": ood}, "wiseft-0.5": {"top1": wise[1]}},
    }
    return RunRecord(
        dir=Path(f"/runs/{method}/{seed}"),
        dataset="world",
        shots=8,
        seed=seed,
        method=method,
        metrics=metrics,
        roles={"test": "test", "ood": "ood"},
        chosen_alpha=0.5,
        hashes={},
        config={"batch_size": 4, **(cfg or {})},
        val_top1=val,
        log=log,
    )


META = {
    "methods": ["fine-tune", "fd-align", "kd-b1", "kd-b5"],
    "wiseft": ["fine-tune", "fd-align", "kd-b1", "kd-b5"],
    "reference": "fd-align",
    "val_choice": {"kd beta:val": ["kd-b1", "kd-b5"]},
}


def _runs():
    return [
        _run("fine-tune", 1, 50.0, 50.0),
        _run("fine-tune", 2, 52.0, 48.0),
        _run("fd-align", 1, 48.0, 58.0),
        _run("fd-align", 2, 49.0, 57.0),
        # seed 1: kd-b5 wins on val although kd-b1 has the better test / OOD numbers
        _run("kd-b1", 1, 60.0, 70.0, val=30.0),
        _run("kd-b5", 1, 45.0, 59.0, val=31.0),
        # seed 2: a tie on val goes to the first listed
        _run("kd-b1", 2, 47.0, 56.0, val=33.0),
        _run("kd-b5", 2, 70.0, 80.0, val=33.0),
    ]


def test_val_choice_rows_choose_on_val_only_and_bring_their_wiseft_rows():
    (g,) = build_groups(_runs(), dict(META))
    assert g.chosen == {"kd beta:val": {1: "kd-b5", 2: "kd-b1"}}
    row = g.points["kd beta:val"]
    assert (row[1]["id"], row[1]["ood_mean"], row[2]["id"], row[2]["ood_mean"]) == (45.0, 59.0, 47.0, 56.0)
    assert g.points["wise-ft of kd beta:val"][1]["id"] == 46.0
    assert g.curves["kd beta:val"][0.5][2]["ood_mean"] == 57.0


def test_paired_differences_against_the_reference():
    (g,) = build_groups(_runs(), dict(META))
    rows = compare.headline_rows(g, META)
    assert rows == ["zero-shot", "fine-tune", "fd-align", "kd beta:val"]  # grid points only through their row
    t = compare.paired_against(g, rows, "fd-align")
    cells = {r[0]: r for r in t.rows}
    # kd beta:val − fd-align: ID (45-48, 47-49) = (-3, -2); OOD (59-58, 56-57) = (+1, -1)
    assert cells["kd beta:val − fd-align"][2].startswith("-2.5 ± 0.7")
    assert cells["kd beta:val − fd-align"][3] == "0 of 2"
    assert cells["kd beta:val − fd-align"][4].startswith("+0.0 ± 1.4")
    assert cells["kd beta:val − fd-align"][5] == "1 of 2"
    assert "wise-ft of kd beta:val − wise-ft of fd-align" in cells


def test_frontier_and_its_line():
    (g,) = build_groups(_runs(), dict(META))
    rows = compare.headline_rows(g, META)
    front = compare.frontier(g, [r for r in rows if r != "zero-shot"])
    # means: fine-tune (51, 49), fd-align (48.5, 57.5), kd beta:val (46, 57.5), WiSE-FT rows +1 each
    names = [r for r, *_ in front]
    assert names[0] == "wise-ft of fd-align"  # 49.5 + 58.5 = 108, the best sum; nothing beats it on both
    assert "kd beta:val" not in names  # fd-align beats it on ID at the same OOD
    assert "wise-ft of fine-tune" in names  # the best ID
    assert "**wise-ft of fd-align**" in compare.frontier_line(g, rows)


def test_cost_per_step_from_the_logs(tmp_path):
    def log(name, ips):
        p = tmp_path / f"{name}.csv"
        p.write_text(
            "step,epoch,lr,ce,kl,loss,images_per_s\n" + "".join(f"{i},1,0,0,0,0,{v}\n" for i, v in enumerate(ips))
        )
        return p

    runs = [
        _run("fine-tune", 1, 50, 50, log=log("ft", [4.0, 4.0, 2.0])),  # batch 4: 1, 1, 2 s -> median 1
        _run("fd-align", 1, 50, 50, log=log("fd", [2.0, 2.0, 1.0])),  # 2, 2, 4 s -> median 2
    ]
    (g,) = build_groups(runs, {**META, "val_choice": {}})
    t = compare.cost_table(g, ["fine-tune", "fd-align"])
    cells = {r[0]: r for r in t.rows}
    assert cells["fine-tune"][2:4] == ["1.000", "1.00×"]
    assert cells["fd-align"][2:5] == ["2.000", "2.00×", "+1.000"]


@pytest.mark.parametrize(
    "cfg, label",
    [
        ({"method": "logit-kd", "beta": 20}, "logit-kd"),
        ({"method": "fd-align", "beta": 20, "spurious": "shuffled"}, "fd-align-shuffled"),
        ({"method": "fine-tune", "beta": 20}, "fine-tune"),
        ({"beta": 20}, "fd-align"),
    ],
)
def test_runs_outside_a_sweep_are_named_after_their_method(cfg, label):
    assert method_label(cfg) == label
