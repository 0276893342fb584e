"""TrainConfig: YAML round trip, unknown keys, the released preset, argparse generation and precedence."""

import argparse
import dataclasses

import pytest

from fdalign.errors import FDAlignError
from fdalign.train.config import TrainConfig, add_config_arguments, config_from_args


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=None)
    add_config_arguments(p)
    return p


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig(
        model="ViT-B-32",
        pretrained="openai",
        data="/d",
        shots=4,
        beta=0.0,
        temperature=50.0,
        crop_scale=[0.08, 1.0],
        ood=["sketch=/s", "r=/r"],
        grad_clip=1.0,
        head="trainable",
    )
    path = cfg.to_yaml(tmp_path / "c.yaml")
    again = TrainConfig.from_yaml(path)
    assert again == cfg
    assert dataclasses.asdict(again)["crop_scale"] == [0.08, 1.0]


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("shots: 4\nlearning_rate: 0.1\n")
    with pytest.raises(FDAlignError) as e:
        TrainConfig.from_yaml(path)
    assert "learning_rate" in str(e.value) and str(path) in str(e.value)


def test_bad_yaml_value_names_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("shots: many\n")
    with pytest.raises(FDAlignError, match="shots"):
        TrainConfig.from_yaml(path)
    with pytest.raises(FDAlignError, match="optimizer"):
        TrainConfig(optimizer="adam").validate()


def test_released_preset_values_and_resolution():
    cfg = TrainConfig.released("EuroSAT", 16)
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.weight_decay) == ("sgd", 0.9, True, 5e-4)
    assert (cfg.epochs, cfg.beta, cfg.kl_direction, cfg.head) == (60, 20.0, "released", "trainable")
    # their all-data-sets script probes first (load_head=True): 60 probe epochs, then FD-Align
    assert (cfg.mode, cfg.lp_epochs) == ("lp-ft", 60)
    assert (cfg.spc, cfg.spc_keep, cfg.spc_k, cfg.spc_renormalize) == (True, 60, 20, False)
    assert cfg.crop_scale == [0.08, 1.0] and cfg.hflip is False and cfg.warmup_steps == 0
    # 10 classes x 16 shots = 160 images: batch min(160, 256) = 160, lr = 9e-5 * 160 / 256
    r = cfg.resolved(160)
    assert r.batch_size == 160
    assert r.lr == pytest.approx(9e-5 * 160 / 256) and r.lp_lr == pytest.approx(20 * 160 / 256)
    assert r.resolved(160) == r  # idempotent, so a saved resolved config resumes identically
    big = TrainConfig.released("imagenet", 16).resolved(16000)
    assert big.batch_size == 256 and big.lr == pytest.approx(5e-5)
    assert TrainConfig.released("fgvc_aircraft", 16).lr == 1e-5
    assert TrainConfig.released("FGVCAircraft", 8).lr == 5e-5
    with pytest.raises(FDAlignError, match="no released"):
        TrainConfig.released("mnist", 16)
    with pytest.raises(FDAlignError, match="shots"):
        TrainConfig.released("dtd", 3)


def test_flags_override_config_file_which_overrides_defaults(tmp_path):
    path = TrainConfig(shots=4, lr=0.5, epochs=3).to_yaml(tmp_path / "c.yaml")
    args = _parser().parse_args(["--config", str(path), "--lr", "0.25", "--no-spc", "--ood", "a=/x", "b=/y"])
    cfg = config_from_args(args)
    assert (cfg.shots, cfg.lr, cfg.epochs, cfg.spc) == (4, 0.25, 3, False)
    assert cfg.ood == ["a=/x", "b=/y"]
    assert config_from_args(_parser().parse_args([])) == TrainConfig()
    # the preset sits below the file and the flags
    args = _parser().parse_args(["--dataset-name", "caltech101", "--shots", "2", "--epochs", "5"])
    cfg = config_from_args(args, preset="released")
    assert (cfg.epochs, cfg.optimizer, cfg.lr) == (5, "sgd", 6e-5)
    args = _parser().parse_args(["--dataset-name", "dtd", "--shots", "4", "--mode", "fdalign"])
    assert config_from_args(args, preset="released").mode == "fdalign"  # the variant without the probe


def test_every_field_has_a_flag_with_help_and_default():
    text = _parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        assert f.metadata.get("help")
    assert "(default: 16)" in text and "(default: adamw)" in text


@pytest.mark.parametrize(
    "kw,said",
    [
        (dict(epochs=1), "(epochs = 1)"),  # the default 1 epoch of warm-up
        (dict(epochs=2), None),
        (dict(epochs=3, warmup_epochs=3.5), "(epochs = 3)"),
        (dict(epochs=1, warmup_steps=2), None),  # chosen in steps: the user knows the run's length
        (dict(epochs=1, warmup_epochs=0.0), None),
        (dict(mode="lp-ft", lp_epochs=1, epochs=5), "(lp_epochs = 1)"),  # the warm-up restarts with each phase
        (dict(mode="linear-probe", lp_epochs=1, epochs=5), None),  # lp_epochs is lp-ft's only
    ],
)
def test_a_warm_up_as_long_as_a_phase_is_said(kw, said):
    got = TrainConfig(model="m", data="/d", **kw).warmup_warning()
    if said is None:
        assert got is None
    else:
        assert said in got and "never decays" in got, got
