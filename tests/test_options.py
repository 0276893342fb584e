"""fdalign.options: one way from config dataclasses to flags and YAML, for TrainConfig, MetaConfig and sweeps."""

import argparse

import pytest

from fdalign.cli import main
from fdalign.errors import FDAlignError
from fdalign.options import add_arguments
from fdalign.train.config import TrainConfig
from fdalign.train.meta import MetaConfig


@pytest.mark.parametrize("cls, command", [(TrainConfig, "fdalign train"), (MetaConfig, "fdalign meta-train")])
def test_yaml_errors_name_the_file_and_the_field(cls, command, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: fast\n")
    with pytest.raises(FDAlignError) as e:
        cls.from_yaml(bad)
    msg = str(e.value)
    assert str(bad) in msg and "lr = 'fast' is not a valid float" in msg and "\n" not in msg
    bad.write_text("betta: 2\n")
    with pytest.raises(
        FDAlignError, match=rf"unknown option 'betta' \(did you mean 'beta'\?\); see `{command} --help`"
    ):
        cls.from_yaml(bad)


@pytest.mark.parametrize("cls", [TrainConfig, MetaConfig])
def test_flags_then_file_then_defaults(cls, tmp_path):
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_arguments(p, cls)
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.25\nepochs: 3\n")
    cfg = cls.from_args(p.parse_args(["--config", str(f), "--epochs", "7", "--no-spc"]))
    default = cls()
    assert (cfg.lr, cfg.epochs, cfg.spc) == (0.25, 7, False)  # file over default, flag over file
    assert cfg.seed == default.seed and cfg.beta == default.beta
    # a written config reads back equal
    cfg.to_yaml(tmp_path / "out.yaml")
    assert cls.from_yaml(tmp_path / "out.yaml") == cfg


def test_choices_are_checked_in_files_too(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kl_direction: sideways\n")
    with pytest.raises(FDAlignError, match="kl_direction = 'sideways' is not one of paper, released"):
        MetaConfig.from_yaml(bad).validate()


def test_meta_train_config_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_way: five\n")
    assert main(["meta-train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "n_way" in err
