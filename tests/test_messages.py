"""What fdalign says, read as a user reads it (issue 21 items 6, 13, 14, 18, 19, 21).

Results are never replaced or mislabelled without a word, messages give advice that exists and
names the right flags, an offline download fails at once, a selection that returns the starting
point says so, and ``--help`` prints each default once.
"""

from __future__ import annotations

import json
import re

import pytest

from _synth import make_imagefolder
from fdalign.cli import build_parser, main

CLASSES = ["red apple", "green leaf", "blue sky"]

pytestmark = pytest.mark.usefixtures("cli_env")


def _model(tiny):
    return ["--model-config", str(tiny["config"]), "--pretrained", str(tiny["checkpoint"])]


def _train(tiny, data, out, *extra):
    return [
        "train",
        *_model(tiny),
        "--data",
        str(data),
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
        "--spc-keep",
        "3",
        "--spc-k",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--no-tensorboard",
        "--out",
        str(out),
        *extra,
    ]


def train_run(tiny, data, out, *extra) -> str:
    """``fdalign train`` of the tiny model into ``out`` (prompt cache beside it), for module fixtures; its stdout."""
    import contextlib
    import io

    from conftest import cli_session

    buf = io.StringIO()
    with cli_session(out.parent), contextlib.redirect_stdout(buf):
        assert main(_train(tiny, data, out, *extra)) == 0
    return buf.getvalue()


def _error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(f"fdalign {command}: error: "), err
    return last


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("msg") / "data", CLASSES, n_train=3, n_test=2, n_val=2)


@pytest.fixture(scope="module")
def trained(tiny_openclip, data, tmp_path_factory):
    """A run whose val selection can only return WiSE-FT alpha 0 (the one candidate), with its stdout."""
    out = tmp_path_factory.mktemp("msg_run") / "run"
    return {"run": out, "stdout": train_run(tiny_openclip, data, out, "--wiseft-alphas", "0")}


# ------------------------------------------------------------------------------------------------
# item 6: results replaced or mislabelled without a word


def test_eval_heads_never_wipes_an_earlier_table(trained, capsys):
    run = trained["run"]
    assert main(["eval", str(run), "--heads", "zeroshot,tip", "--device", "cpu", "--no-progress"]) == 0
    first = json.loads((run / "eval-heads" / "metrics.json").read_text())["metrics"]
    assert main(["eval", str(run), "--heads", "tip", "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert json.loads((run / "eval-heads" / "metrics.json").read_text())["metrics"] == first  # kept
    second = json.loads((run / "eval-heads-2" / "metrics.json").read_text())["metrics"]
    assert f"{run / 'eval-heads'} holds an earlier evaluation with other inputs (heads)" in err
    assert f"writing {run / 'eval-heads-2'}" in err
    assert set(second["test"]) < set(first["test"])
    # the same evaluation again replaces its own folder, and nothing else
    assert main(["eval", str(run), "--heads", "tip", "--device", "cpu", "--no-progress"]) == 0
    assert not (run / "eval-heads-3").exists()


def test_eval_split_train_warns_that_it_scores_training_images(trained, tmp_path, capsys):
    run = trained["run"]
    assert (
        main(["eval", str(run), "--split", "train", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "e")])
        == 0
    )
    err = capsys.readouterr().err
    n = len(json.loads((run / "splits" / "train.json").read_text())["samples"])
    assert f"set 'train' holds {n} of the run's {n} training images" in err and "not a test result" in err
    assert main(["eval", str(run), "--device", "cpu", "--no-progress", "--out", str(tmp_path / "t")]) == 0
    assert "training images" not in capsys.readouterr().err  # the test split holds none


def test_export_of_selected_alpha_zero_says_zero_shot(trained, tmp_path, capsys):
    run = trained["run"]
    assert json.loads((run / "selection.json").read_text())["wiseft_alpha"]["chosen"] == 0.0
    out = tmp_path / "exp"
    assert main(["export", str(run), "--format", "open_clip", "--out", str(out), "--wiseft-alpha", "selected"]) == 0
    said = capsys.readouterr().out
    assert "zero-shot CLIP weights (the run chose alpha 0 on val)" in said
    card = (out / "README.md").read_text()
    title = card.splitlines()[0]
    assert "zero-shot CLIP" in title and "fine-tuned with" not in title
    assert "none of that fine-tuning is in it" in card
    # the fine-tuned weights keep their title
    assert (
        main(
            ["export", str(run), "--format", "open_clip", "--out", str(tmp_path / "ft"), "--wiseft-alpha", "fine-tuned"]
        )
        == 0
    )
    assert "CLIP fine-tuned with fdalign" in (tmp_path / "ft" / "README.md").read_text().splitlines()[0]


# ------------------------------------------------------------------------------------------------
# item 13: wrong advice


def test_missing_run_path_says_no_such_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "runs" / "typo")]) == 2
    err = _error(capsys, "eval")
    assert f"no such run directory: {tmp_path / 'runs' / 'typo'}" in err and "--data is required" not in err


def test_meta_train_names_its_own_flags(tiny_openclip, tmp_path, capsys):
    from test_episodes import write_class_splits

    write_class_splits(
        tmp_path / "mini", {"base": ["red", "green", "blue"], "val": ["cyan", "pink", "grey"]}, per_class=4
    )
    assert (
        main(
            [
                "meta-train",
                *_model(tiny_openclip),
                "--data",
                str(tmp_path / "mini"),
                "--n-way",
                "5",
                "--k-shot",
                "1",
                "--q-query",
                "1",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    err = _error(capsys, "meta-train")
    assert "lower --n-way" in err and "--ways" not in err
    assert (
        main(
            [
                "meta-train",
                *_model(tiny_openclip),
                "--data",
                str(tmp_path / "mini"),
                "--n-way",
                "3",
                "--k-shot",
                "2",
                "--q-query",
                "3",
                "--on-small",
                "skip",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )  # 4 images per class < K + Q = 5
    err = _error(capsys, "meta-train")
    assert "--n-way, --k-shot or --q-query" in err and "--queries" not in err


@pytest.mark.parametrize("flag,extra", [("--epochs", []), ("--lp-epochs", ["--mode", "lp-ft"])])
def test_epochs_zero_and_negative_give_one_limit(tiny_openclip, tmp_path, capsys, flag, extra):
    limits = []
    for value in ("0", "-2"):
        assert main(_train(tiny_openclip, tmp_path / "none", tmp_path / "r", *extra, flag, value)) == 2
        limits.append(_error(capsys, "train").split(value, 1)[1])
    assert limits[0] == limits[1] == " must be >= 1" + (" for mode lp-ft" if extra else "")


def test_unreadable_training_image_advice_exists(tiny_openclip, tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", CLASSES, n_train=2, n_test=2, n_val=2)
    for p in (data / "train" / "green_leaf").iterdir():
        p.write_bytes(b"not a png")
    assert main(_train(tiny_openclip, data, tmp_path / "r")) == 2
    err = _error(capsys, "train")
    assert "green_leaf" in err and "skip bad images" not in err and "fdalign data check" in err
    flags = re.findall(r"--[a-z-]+", err)
    known = {
        o for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions for o in a.option_strings
    }
    assert set(flags) <= known, flags  # every flag it advises exists


def test_a_flat_search_is_a_tie_not_a_grid_edge():
    import torch

    from fdalign.eval.heads import selection_record
    from fdalign.heads.cache import grid_edges, search
    from fdalign.selection import EvalSplit, SelectionLog

    val = EvalSplit(torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), "val")
    grid = [(b, a) for b in (1.0, 2.0, 3.0) for a in (0.5, 1.0, 2.0)]
    log = SelectionLog()
    assert search("tip: beta, alpha", grid, lambda c, f, y: 50.0, val, log) == (1.0, 0.5)  # the tie's first
    chosen = selection_record(log)["tip: beta, alpha"]["chosen"]
    assert "edge" not in chosen and "widening" not in chosen and "scored the same" in chosen
    # a real edge is still one: the best is alone at alpha's top
    scores = {c: (60.0 if c == (2.0, 2.0) else 50.0) for c in grid}
    assert grid_edges((2.0, 2.0), grid, ["beta", "alpha"], scores) == ["alpha (highest)"]
    # a tie between an edge point (chosen: first in grid order) and an inner one is no edge on that axis
    scores = {c: (60.0 if c in ((1.0, 0.5), (1.0, 1.0)) else 50.0) for c in grid}
    assert grid_edges((1.0, 0.5), grid, ["beta", "alpha"], scores) == ["beta (lowest)"]
    assert grid_edges((1.0, 0.5), grid, ["beta", "alpha"]) == ["beta (lowest)", "alpha (lowest)"]  # no scores


# ------------------------------------------------------------------------------------------------
# item 14: offline open_clip tags fail at once


def _offline_open_clip(monkeypatch, tmp_path):
    import huggingface_hub.constants
    import open_clip.pretrained

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(
        open_clip.pretrained,
        "download_pretrained",
        lambda *a, **k: pytest.fail("a download was tried while offline (it retries ~54 s)"),
    )


def test_openai_tag_without_network_fails_fast(monkeypatch, tmp_path):
    import socket

    from fdalign.backends import load_clip
    from fdalign.errors import FDAlignError

    _offline_open_clip(monkeypatch, tmp_path)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    probed = []

    def no_network(address, *a, **k):  # what a machine without network answers
        probed.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(
        FDAlignError,
        match=r"could not download the weights for ViT-B-32 \(pretrained=openai\) .*"
        r"no network connection to https://huggingface.co\. .*--pretrained",
    ):
        load_clip("ViT-B-32", pretrained="openai")
    assert probed == [("huggingface.co", 443)]  # one probe, no retries: fast without timing it


def test_openai_tag_with_hf_hub_offline_fails_without_a_probe(monkeypatch, tmp_path):
    from fdalign.backends import hub, load_clip
    from fdalign.errors import FDAlignError

    _offline_open_clip(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "host_reachable", lambda *a, **k: pytest.fail("no probe when offline is set"))
    with pytest.raises(FDAlignError, match="HF_HUB_OFFLINE is set"):
        load_clip("ViT-B-32", pretrained="openai")


def test_a_cached_tag_needs_no_network(monkeypatch, tmp_path):
    """A checkpoint already in the Hub cache is found without asking the network (the fast path)."""
    import huggingface_hub.constants
    import open_clip.pretrained

    from fdalign.backends import hub
    from fdalign.backends.openclip import _cached_weights

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "host_reachable", lambda *a, **k: pytest.fail("no probe for a cached file"))
    cfg = open_clip.pretrained.get_pretrained_cfg("ViT-B-32", "openai")
    repo, name = cfg["hf_hub"].rstrip("/"), "open_clip_model.safetensors"
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / name).write_bytes(b"weights")
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _cached_weights(cfg) == str(snap / name)


# ------------------------------------------------------------------------------------------------
# item 18: a selection that returns the starting point says so


def test_selection_of_alpha_zero_is_said_on_stdout_and_in_the_report(trained):
    run, said = trained["run"], trained["stdout"]
    assert "WiSE-FT alpha on val: 0" in said
    assert "note: val chose WiSE-FT alpha 0" in said and "the selected model is zero-shot CLIP" in said
    assert "the selected model is zero-shot CLIP" in (run / "report.md").read_text()


def test_starting_point_notes_by_hand():
    from fdalign.selection import starting_point_notes

    flat_epochs = {"epoch": {"chosen": 1, "on": "val", "score": 25.0, "scores": {"1": 25.0, "2": 25.0}}}
    assert starting_point_notes(flat_epochs) == [
        "every epoch scored the same on val (25.00): epoch 1 won a tie, so val could not tell the epochs apart"
    ]
    moved = {
        "epoch": {"chosen": 2, "on": "val", "score": 50.0, "scores": {"1": 25.0, "2": 50.0}},
        "wiseft_alpha": {"chosen": 0.5, "scores": {"0.0": 25.0, "0.5": 50.0}},
    }
    assert starting_point_notes(moved) == []
    zero = {"wiseft_alpha": {"chosen": 0.0, "scores": {"0.0": 50.0, "1.0": 25.0}}}
    (note,) = starting_point_notes(zero)
    assert note.startswith("val chose WiSE-FT alpha 0: the selected model is zero-shot CLIP")


# ------------------------------------------------------------------------------------------------
# item 19: one default per option


def _parsers(parser, path=("fdalign",)):
    yield " ".join(path), parser
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_help_prints_each_default_once():
    seen = 0
    for name, parser in _parsers(build_parser()):
        flat = " ".join(parser.format_help().split())
        twice = re.findall(r"\(default: [^()]*(?:\([^()]*\)[^()]*)*\) \(default: [^)]*\)", flat)
        assert not twice, (name, twice)
        seen += 1
    assert seen > 15
    flat = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "(default: up to 4, at most the CPU count)" in flat


# ------------------------------------------------------------------------------------------------
# item 21: the model card's load snippet


def test_model_card_snippet_has_no_absolute_path(trained, tmp_path):
    out = tmp_path / "somewhere" / "my-export"
    assert main(["export", str(trained["run"]), "--format", "open_clip", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    loading = card.split("## Loading", 1)[1].split("```", 2)[1]
    assert 'create_model_and_transforms("local-dir:my-export")' in loading
    assert str(tmp_path) not in loading and "/somewhere" not in loading
