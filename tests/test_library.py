"""The library layer: ``fdalign.finetune(config)`` from Python is ``fdalign train`` with the same config.

Same metrics, same selection, same weights, same files; ``fdalign.evaluate`` is ``fdalign eval``.
The library's config dataclasses carry the commands' defaults (a drift would make the sweep, which
calls the library, differ from a user's command).
"""

import argparse
import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch
import yaml

import fdalign
from fdalign.cli import build_parser, main
from fdalign.train.run import load_model
from test_cli_train import folders  # noqa: F401 (the generated ID / OOD folders and templates)

pytestmark = pytest.mark.usefixtures("cli_env")


def _config(tiny, data, out) -> "fdalign.TrainConfig":
    return fdalign.TrainConfig(
        model_config=str(tiny["config"]),
        pretrained=str(tiny["checkpoint"]),
        data=str(data["id"]),
        shots=2,
        epochs=2,
        batch_size=3,
        num_workers=0,
        templates=str(data["templates"]),
        spc_keep=3,
        spc_k=2,
        wiseft_alphas=[0.0, 0.5, 1.0],
        device="cpu",
        lr=1e-3,
        progress=False,
        ood=[f"shifted={data['ood']}"],
        out=str(out),
    )


def _argv(cfg) -> list[str]:
    """The same config as `fdalign train` flags."""
    return [
        "train",
        "--model-config",
        cfg.model_config,
        "--pretrained",
        cfg.pretrained,
        "--data",
        cfg.data,
        "--shots",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "3",
        "--num-workers",
        "0",
        "--templates",
        cfg.templates,
        "--spc-keep",
        "3",
        "--spc-k",
        "2",
        "--wiseft-alphas",
        "0",
        "0.5",
        "1",
        "--device",
        "cpu",
        "--lr",
        "1e-3",
        "--no-progress",
        "--ood",
        cfg.ood[0],
        "--out",
        cfg.out,
    ]


def test_finetune_equals_fdalign_train(tiny_openclip, folders, tmp_path, capsys):  # noqa: F811
    cfg = _config(tiny_openclip, folders, tmp_path / "lib")
    run = fdalign.finetune(cfg)
    cli_cfg = dataclasses.replace(cfg, out=str(tmp_path / "cli"))
    assert main(_argv(cli_cfg)) == 0, capsys.readouterr().err

    lib, cli = tmp_path / "lib", tmp_path / "cli"
    lib_doc, cli_doc = (json.loads((p / "metrics.json").read_text()) for p in (lib, cli))
    assert lib_doc["metrics"] == cli_doc["metrics"]
    assert set(lib_doc["metrics"]) == {"test", "shifted"}
    for name in ("selection.json", "hashes.json", "splits/train.json", "splits/val.json"):
        assert (lib / name).read_text() == (cli / name).read_text(), name
    lib_yaml, cli_yaml = (yaml.safe_load((p / "config.yaml").read_text()) for p in (lib, cli))
    assert {k: v for k, v in lib_yaml.items() if k != "out"} == {k: v for k, v in cli_yaml.items() if k != "out"}
    a, b = load_model(lib / "model" / "best.safetensors"), load_model(cli / "model" / "best.safetensors")
    assert a.encoder.keys() == b.encoder.keys()
    for k in a.encoder:
        assert torch.equal(a.encoder[k], b.encoder[k]), k
    assert torch.equal(a.head.prototypes, b.head.prototypes)

    # the Run object is what was written: metrics, selection, paths, and the selected encoder + head
    assert json.loads(json.dumps(run.metrics)) == lib_doc["metrics"]
    assert run.selection["epoch"] == json.loads((lib / "selection.json").read_text())["epoch"]
    assert run.wiseft_alpha == json.loads((lib / "selection.json").read_text())["wiseft_alpha"]["chosen"]
    assert all(p.is_file() for p in run.paths.values()), run.paths
    state = {k: v.float() for k, v in run.fine_tuned_encoder.state_dict().items()}
    assert state.keys() == a.encoder.keys() and all(torch.equal(state[k], a.encoder[k]) for k in state)
    # the config passed in is not changed by the call
    assert cfg.dataset_name is None and cfg.out == str(lib)

    # fdalign.evaluate(run) == fdalign eval RUN
    ev = fdalign.evaluate(run.out, device="cpu", no_progress=True, out=str(tmp_path / "lib-eval"))
    assert main(["eval", str(cli), "--device", "cpu", "--no-progress", "--out", str(tmp_path / "cli-eval")]) == 0
    cli_eval = json.loads((tmp_path / "cli-eval" / "metrics.json").read_text())["metrics"]
    assert json.loads((tmp_path / "lib-eval" / "metrics.json").read_text())["metrics"] == cli_eval
    assert ev.metrics["test"]["fine-tuned"]["top1"] == pytest.approx(cli_doc["metrics"]["test"]["fine-tuned"]["top1"])

    # fdalign.predict(run) == fdalign predict RUN; fdalign.export(run) == fdalign export RUN
    images = sorted(str(p) for p in (Path(folders["id"]) / "test").rglob("*.png"))[:4]
    fdalign.predict(run, images, out=str(tmp_path / "lib.csv"), device="cpu")
    assert (
        main(["predict", str(cli), *images, "--out", str(tmp_path / "cli.csv"), "--device", "cpu", "--no-progress"])
        == 0
    )
    assert (tmp_path / "lib.csv").read_text() == (tmp_path / "cli.csv").read_text()
    fdalign.export(run, "open_clip", tmp_path / "lib-export", verify=False)
    assert (
        main(["export", str(cli), "--format", "open_clip", "--out", str(tmp_path / "cli-export"), "--no-verify"]) == 0
    )
    assert sorted(p.name for p in (tmp_path / "lib-export").iterdir()) == sorted(
        p.name for p in (tmp_path / "cli-export").iterdir()
    )


def _defaults(parser: argparse.ArgumentParser) -> dict:
    return {a.dest: a.default for a in parser._actions if a.dest not in ("help", "command")}


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize(
    "command, cls, positional", [("eval", "EvalConfig", "target"), ("meta-eval", "MetaEvalConfig", "target_model")]
)
def test_library_configs_carry_the_commands_defaults(command, cls, positional):
    config_cls = getattr(importlib.import_module("fdalign.workflows"), cls)
    defaults = _defaults(_subparser(command))
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for dest, default in defaults.items():
        if dest in (positional, "func"):
            continue
        assert dest in fields, f"{command} --{dest} has no field in {cls}"
        f = fields[dest]
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if isinstance(default, list) and value is not None:
            value = list(value)
        if dest == "heads" and command == "meta-eval":
            assert value is None  # None: every episode head, as the flag's default lists
            continue
        assert value == default, f"{cls}.{dest} = {value!r} but {command} defaults to {default!r}"
