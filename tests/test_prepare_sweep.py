"""The sweep options that let a user try a preset on a few cells right after preparing:
--only PATTERN, --limit N and --set KEY=VALUE (a tiny model, one epoch)."""

from __future__ import annotations

import pytest

from fdalign.cli import main
from fdalign.experiments import sweep as sw


def test_only_and_limit_select_cells(tmp_path, capsys):
    assert (
        main(
            [
                "sweep",
                "coop",
                "--data-root",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--dry-run",
                "--only",
                "oxford_pets/k1/*",
                "dtd/k16/s3/fd-align",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    keys = [ln.split()[-1] for ln in lines[:-1]]
    assert keys == [
        "oxford_pets/k1/s1/fine-tune",
        "oxford_pets/k1/s1/fd-align",
        "oxford_pets/k1/s2/fine-tune",
        "oxford_pets/k1/s2/fd-align",
        "oxford_pets/k1/s3/fine-tune",
        "oxford_pets/k1/s3/fd-align",
        "dtd/k16/s3/fd-align",
    ]
    assert lines[-1] == "7 runs"
    assert (
        main(["sweep", "coop", "--out", str(tmp_path / "o"), "--dry-run", "--only", "oxford_pets/*", "--limit", "2"])
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1] == "2 runs"


def test_only_matching_nothing_says_what_keys_look_like(tmp_path, capsys):
    assert main(["sweep", "coop", "--out", str(tmp_path), "--dry-run", "--only", "pets/*"]) == 2
    assert "matches no run; keys look like imagenet/k1/s1/fine-tune" in capsys.readouterr().err


def test_set_overrides_config_preset_and_method(tmp_path):
    cfg = sw.load_sweep_config("imagenet")
    cfg.overrides = sw.parse_overrides(["model=tiny", "epochs=1", "model_config=null", "batch-size=8"])
    lp = sw.run_config(cfg, sw.RunSpec("imagenet", 16, 1, "lp"), tmp_path, data_root=str(tmp_path))
    assert (lp.model, lp.epochs, lp.model_config, lp.batch_size) == ("tiny", 1, None, 8)  # the method said 60 epochs
    assert lp.mode == "linear-probe" and lp.classnames == "imagenet"  # the rest of the cell is the preset's


# shots and seeds may be set (they replace the grid's lists: test_python_api.py); the data may not
@pytest.mark.parametrize("item,words", [("data=/x", "the sweep grid decides 'data'"), ("epochs", "write KEY=VALUE")])
def test_bad_set_is_a_user_error(item, words, tmp_path, capsys):
    assert main(["sweep", "coop", "--out", str(tmp_path), "--dry-run", "--set", item]) == 2
    assert words in capsys.readouterr().err


def test_set_heads_and_heads_preset_are_the_sweeps_own(tmp_path, capsys):
    """A smoke run of the coop preset drops the authors' 10-view cache (heads_preset) or the heads; they
    are sweep settings, so they never reach a run's train options."""
    cfg = sw.apply_overrides(sw.load_sweep_config("coop"), sw.parse_overrides(["heads_preset=null", "epochs=1"]))
    assert cfg.heads_preset is None and cfg.heads == ["tip", "tip-f", "ape", "ape-t"]
    assert "heads_preset" not in cfg.overrides and cfg.overrides == {"epochs": 1}
    cfg = sw.apply_overrides(sw.load_sweep_config("coop"), sw.parse_overrides(["heads=[]"]))
    assert cfg.heads == [] and cfg.heads_preset == "authors"
    assert sw.apply_overrides(sw.load_sweep_config("coop"), sw.parse_overrides(["heads=tip"])).heads == ["tip"]
    assert main(["sweep", "coop", "--out", str(tmp_path), "--dry-run", "--set", "heads=[tipp]"]) == 2
    assert "error: --set heads: heads lists 'tipp'; choose from tip," in capsys.readouterr().err
