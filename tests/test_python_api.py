"""The Python API of issue 26: your own model (``model=``), ``load_run`` / ``list_models``, callbacks and
loggers, progress off a terminal, and the defects found from Python (each test failed before its fix).

Two runs are trained once for the module: the tiny open_clip model with every logger, a recording
callback and stderr not a terminal (WiSE-FT alphas [0] only, so val must select alpha 0: the zero-shot
weights), and a tiny CLIP of our own that is neither open_clip nor Hugging Face.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import fdalign
from conftest import cli_session
from fdalign.cli import build_parser, main
from test_cli_train import folders  # noqa: F401 (the generated ID / OOD folders and templates)

EPOCHS = 2


def _config(tiny, data, out, **kw) -> fdalign.TrainConfig:
    base = dict(
        model_config=str(tiny["config"]),
        pretrained=str(tiny["checkpoint"]),
        data=str(data["id"]),
        shots=2,
        epochs=EPOCHS,
        batch_size=3,
        num_workers=0,
        templates=str(data["templates"]),
        spc_keep=3,
        spc_k=2,
        wiseft_alphas=[0.0],
        device="cpu",
        lr=1e-3,
        ood=[f"shifted={data['ood']}"],
        out=str(out),
    )
    base.update(kw)
    return fdalign.TrainConfig(**base)


class Recorder:
    def __init__(self):
        self.steps, self.epochs, self.ends = [], [], []

    def on_step(self, m):
        self.steps.append(m)

    def on_epoch_end(self, m):
        self.epochs.append(m)

    def on_end(self, run):
        self.ends.append(run)


class _NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


@pytest.fixture(scope="module")
def oc_run(tiny_openclip, folders, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("api")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    rec, err = Recorder(), _NotATerminal()
    try:
        with cli_session(root), contextlib.redirect_stderr(err):
            cfg = _config(tiny_openclip, folders, root / "run", logger=["tensorboard", "wandb", "mlflow"])
            run = fdalign.finetune(cfg, callbacks=[rec])
    finally:
        mp.undo()
    return {"run": run, "rec": rec, "stderr": err.getvalue(), "root": root, "cfg": cfg}


# ----------------------------------------------------------------------------------------------
# a CLIP of our own: neither open_clip nor Hugging Face


class TinyCLIP(nn.Module):
    """Meets fdalign.backends.custom.CLIPLike: encode_image, encode_text, tokenize, logit_scale, preprocess."""

    def __init__(self):
        super().__init__()
        from torchvision import transforms as T

        torch.manual_seed(0)
        self.visual = nn.Sequential(nn.Conv2d(3, 8, 8, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(8, 16)
        self.text = nn.EmbeddingBag(128, 16)
        self.logit_scale = 20.0
        self.preprocess = T.Compose(
            [
                T.Resize(32, interpolation=T.InterpolationMode.BILINEAR),
                T.CenterCrop(32),
                T.ToTensor(),
                T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
            ]
        )

    def encode_image(self, images):
        return self.proj(self.visual(images))

    def tokenize(self, texts):
        width = max(len(t) for t in texts)
        return torch.tensor([[ord(c) % 128 for c in t.ljust(width)] for t in texts])

    def encode_text(self, tokens):
        return self.text(tokens)


@pytest.fixture(scope="module")
def own_run(tiny_openclip, folders, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("own")
    model = TinyCLIP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with cli_session(root):
        cfg = _config(
            tiny_openclip, folders, root / "run", model_config=None, pretrained=None, epochs=1, progress=False
        )
        run = fdalign.finetune(cfg, model=model)
    return {"run": run, "model": model, "before": before, "root": root}


def test_own_model_trains_and_comes_back_with_load_run(own_run, folders):  # noqa: F811
    run, model = own_run["run"], own_run["model"]
    assert set(run.metrics) == {"test", "shifted"} and "fine-tuned" in run.metrics["test"]
    # the model passed in is the base, untouched; the run's fine-tuned tower moved away from it
    assert all(torch.equal(v, own_run["before"][k]) for k, v in model.state_dict().items())
    moved = run.fine_tuned_encoder.state_dict()
    assert any(not torch.equal(moved[f"model.{k}"], v) for k, v in own_run["before"].items() if k.startswith("proj"))
    # its config cannot name the model: load_run asks for it, then gives the run's selected model
    with pytest.raises(fdalign.FDAlignError, match=r"load_run\(run, model=\.\.\.\)"):
        fdalign.load_run(run.out)
    loaded = fdalign.load_run(run.out, model=model, wiseft_alpha="fine-tuned")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), run.fine_tuned_encoder(x), atol=1e-5, rtol=0)
    images = sorted(str(p) for p in (Path(folders["id"]) / "test").rglob("*.png"))[:3]
    pred = loaded.predict(images)
    assert len(pred.ok) == 3 and set(pred.labels.values()) <= set(run.classnames)


def test_own_model_zero_shot_evaluation_and_its_run(own_run, folders, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
    run = own_run["run"]
    ev = fdalign.evaluate(own_run["model"], str(folders["id"]), device="cpu", progress=False, out=str(tmp_path / "e"))
    by_hand = run.metrics["test"]["zero-shot"]["top1"]  # the run's zero-shot row: the same weights
    assert ev.metrics["test"]["zero-shot"]["top1"] == pytest.approx(by_hand)
    # the run itself, given its base model again: as trained
    ev = fdalign.evaluate(run.out, model=own_run["model"], device="cpu", progress=False, out=str(tmp_path / "r"))
    for row in ("zero-shot", "fine-tuned"):
        assert ev.metrics["test"][row]["top1"] == pytest.approx(run.metrics["test"][row]["top1"]), row


def test_as_backend_open_clip_and_hf_equal_their_loaders(tiny_openclip, tiny_hf):
    import open_clip
    from transformers import CLIPModel, CLIPProcessor

    from fdalign.backends.custom import as_backend

    ref = fdalign.load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])
    model = ref.model
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)  # the tiny model's context
    mine = as_backend((model, tokenizer, ref.preprocess_eval()))
    texts = ["a photo of a cat.", "a dog"]
    torch.testing.assert_close(mine.encode_text(texts), ref.encode_text(texts))
    assert mine.image_spec == ref.image_spec and mine.logit_scale == ref.logit_scale

    hf_ref = fdalign.load_clip("hf:" + str(tiny_hf["dir"]))
    hf = as_backend((CLIPModel.from_pretrained(tiny_hf["dir"]), CLIPProcessor.from_pretrained(tiny_hf["dir"])))
    torch.testing.assert_close(hf.encode_text(texts), hf_ref.encode_text(texts))
    assert hf.image_spec == hf_ref.image_spec and hf.logit_scale == pytest.approx(tiny_hf["logit_scale"])
    with pytest.raises(fdalign.FDAlignError, match="lacks encode_image, encode_text, tokenize"):
        as_backend(nn.Linear(2, 2))


def test_list_models_names_builtins_and_open_clip():
    names = fdalign.list_models()
    assert "fdalign-world" in names and "ViT-B-32" in names


# ----------------------------------------------------------------------------------------------
# callbacks, loggers, progress


def test_callbacks_see_every_step_and_epoch_and_the_run(oc_run):
    rec, run = oc_run["rec"], oc_run["run"]
    log_rows = (run.out / "log.csv").read_text().strip().splitlines()[1:]
    assert len(rec.steps) == len(log_rows) > 0 and rec.steps[-1]["step"] == len(log_rows)
    assert [m["epoch"] for m in rec.epochs] == list(range(1, EPOCHS + 1))
    assert [m["val_top1"] for m in rec.epochs] == json.loads((run.out / "metrics.json").read_text())["train"][
        "val_top1_per_epoch"
    ]
    assert rec.ends == [run]


def test_loggers_write_through_their_libraries(oc_run):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, rec = oc_run["run"], oc_run["rec"]
    acc = EventAccumulator(str(run.out / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("val/top1")] == pytest.approx([m["val_top1"] for m in rec.epochs])
    assert len(acc.Scalars("train/loss")) == len(rec.steps)
    assert list((run.out / "wandb").glob("offline-run-*/run-*.wandb")), "no offline W&B run"
    client = MlflowClient(tracking_uri=f"sqlite:///{(run.out / 'mlflow.db').resolve()}")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("fdalign").experiment_id])
    assert [m.value for m in client.get_metric_history(mlrun.info.run_id, "val/top1")] == pytest.approx(
        [m["val_top1"] for m in rec.epochs]
    )
    assert mlrun.data.metrics["test/fine-tuned/top1"] == pytest.approx(run.metrics["test"]["fine-tuned"]["top1"])
    assert mlrun.info.status == "FINISHED"


def test_a_missing_logger_library_is_said(tiny_openclip, folders, tmp_path, monkeypatch):  # noqa: F811
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    with pytest.raises(fdalign.FDAlignError, match=r"pip install 'fdalign\[tensorboard\]'"):
        fdalign.finetune(_config(tiny_openclip, folders, tmp_path / "a", logger=["tensorboard"]))
    assert not (tmp_path / "a").exists()  # before anything is written
    # tensorboard: true (older configs) warns instead of staying silent; stop the run at its data
    cfg = _config(tiny_openclip, folders, tmp_path / "b", tensorboard=True)
    cfg.data = str(tmp_path / "nowhere")
    with pytest.warns(UserWarning, match="tensorboard package is not installed"), pytest.raises(fdalign.FDAlignError):
        fdalign.finetune(cfg)


def test_progress_off_a_terminal_is_one_line_per_epoch_and_set(oc_run):
    err = oc_run["stderr"]
    for e in range(1, EPOCHS + 1):
        assert sum(f"epoch {e}/{EPOCHS} (fdalign): val top-1" in line for line in err.splitlines()) == 1, err
    for name in ("test", "shifted"):
        assert sum(f"evaluated {name} (" in line for line in err.splitlines()) == 1, err


# ----------------------------------------------------------------------------------------------
# defects found from Python


def test_1_predict_takes_one_path_as_a_string(oc_run, folders):  # noqa: F811
    image = sorted((Path(folders["id"]) / "test").rglob("*.png"))[0]
    pred = fdalign.predict(oc_run["run"], str(image), device="cpu")
    assert pred.paths == [str(image)] and len(pred.ok) == 1
    assert pred.classnames == oc_run["run"].classnames and pred.labels[str(image)] in pred.classnames


def test_2_an_unfinished_run_is_refused_alike_by_eval_export_predict_and_load_run(oc_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(oc_run["run"].out, run)
    (run / "selection.json").unlink()  # as a run still training, or interrupted, has it
    calls = {
        "eval": lambda: fdalign.evaluate(run, device="cpu"),
        "export": lambda: fdalign.export(run, "open_clip", tmp_path / "x"),
        "predict": lambda: fdalign.predict(run, str(tmp_path)),
        "load_run": lambda: fdalign.load_run(run),
    }
    for command, call in calls.items():
        with pytest.raises(fdalign.FDAlignError) as e:
            call()
        assert str(e.value).startswith(f"run {run} has not finished training"), str(e.value)
        assert f"{command} reads only finished runs" in str(e.value) and f"then {command} it" in str(e.value)


def test_3_train_config_checks_types_at_construction():
    c = fdalign.TrainConfig(shots="8", lr="1e-4", ood="sketch=/data/sketch", epochs=3.0)
    assert (c.shots, c.lr, c.ood, c.epochs) == (8, 1e-4, ["sketch=/data/sketch"], 3)
    assert type(c.shots) is int and type(c.lr) is float
    for kw, field in ((dict(epochs=1.5), "epochs"), (dict(lr="fast"), "lr"), (dict(spc="maybe"), "spc")):
        with pytest.raises(fdalign.FDAlignError, match=rf"TrainConfig: {field} = "):
            fdalign.TrainConfig(**kw)


def test_3_finetune_takes_a_dict_and_says_what_else(tmp_path):
    with pytest.raises(fdalign.FDAlignError, match=r"^out is required \(in the config\)"):
        fdalign.finetune({"model": "fdalign-world", "data": str(tmp_path), "shots": "2"})
    with pytest.raises(fdalign.FDAlignError, match="unknown option 'shot'"):
        fdalign.finetune({"shot": 2})
    with pytest.raises(fdalign.FDAlignError, match="TrainConfig or a dict"):
        fdalign.finetune(["data"])


def test_4_metrics_docstrings_say_set_then_row(oc_run):
    run = oc_run["run"]
    assert set(run.metrics) == {"test", "shifted"}  # sets first ...
    assert set(run.metrics["test"]) == {"zero-shot", "fine-tuned"}  # ... then rows
    for cls in (fdalign.Run, fdalign.Evaluation):
        assert "{set: {row:" in " ".join(cls.__doc__.split()).replace("``", ""), cls


def test_5_from_text_encoder_has_no_scale_of_its_own(tiny_openclip):
    backend = fdalign.load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])
    with pytest.raises(fdalign.FDAlignError, match="needs scale="):
        fdalign.FDAlignLoss.from_text_encoder(backend.encode_text, backend.image_encoder, ["a", "b"], ["{}"], spc=False)


def test_6_run_encoder_export_predict_and_load_run_are_the_selected_model(oc_run, folders, tmp_path, capsys):  # noqa: F811
    run = oc_run["run"]
    assert run.wiseft_alpha == 0.0  # the only alpha offered
    zs_enc, zs_head = run.models["zero-shot"]
    assert run.encoder is zs_enc and run.head is zs_head
    assert run.fine_tuned_encoder is run.models["fine-tuned"][0]
    assert any(
        not torch.equal(a, b)
        for a, b in zip(zs_enc.state_dict().values(), run.fine_tuned_encoder.state_dict().values())
    )
    images = sorted(str(p) for p in (Path(folders["id"]) / "test").rglob("*.png"))
    x = torch.stack([run.preprocess(__import__("PIL.Image").Image.open(p)) for p in images[:3]])
    loaded = fdalign.load_run(run)
    assert loaded.wiseft_alpha == 0.0
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), run.encoder(x), atol=1e-5, rtol=1e-5)
    # load_run(run).predict == fdalign.predict(run) == `fdalign predict RUN`
    lib = fdalign.predict(run, images, out=str(tmp_path / "lib.csv"), device="cpu")
    assert lib.classifier.wiseft_alpha == 0.0
    assert main(["predict", str(run.out), *images, "--out", str(tmp_path / "cli.csv"), "--no-progress"]) == 0
    assert (tmp_path / "lib.csv").read_text() == (tmp_path / "cli.csv").read_text()
    mine = loaded.predict(images)
    assert mine.labels == lib.labels and torch.equal(mine.probs, lib.probs)
    fine = fdalign.predict(run, images, wiseft_alpha="fine-tuned", device="cpu")
    assert fine.classifier.wiseft_alpha is None


def test_7_evaluate_progress_and_ood_string(oc_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
    run = oc_run["run"]
    shifted = run.config.ood[0]
    ev = fdalign.evaluate(run, ood=shifted, device="cpu", progress=True, out=str(tmp_path / "e"))
    assert ev.metrics["shifted"]["fine-tuned"]["top1"] == pytest.approx(run.metrics["shifted"]["fine-tuned"]["top1"])
    err = capsys.readouterr().err  # not a terminal: one line per evaluated set
    assert [line.split(" (")[0] for line in err.splitlines() if " evaluated " in line] == [
        "fdalign eval: evaluated test",
        "fdalign eval: evaluated shifted",
    ], err
    fdalign.evaluate(run, device="cpu", progress=False, out=str(tmp_path / "f"))
    assert " evaluated " not in capsys.readouterr().err


def test_logger_flag_is_checked(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--logger", "neptune"]) == 2
    assert "logger = ['neptune'] has 'neptune'; choose from tensorboard, wandb, mlflow" in capsys.readouterr().err


def test_7_a_model_typo_is_a_typo():
    with pytest.raises(fdalign.FDAlignError, match="did you mean 'fdalign-world'"):
        fdalign.load_clip("fdalign-wrold")


def test_7_python_errors_name_keywords_and_the_cli_flags(oc_run, capsys):
    cfg = oc_run["cfg"]
    with pytest.raises(fdalign.FDAlignError) as e:
        fdalign.finetune(cfg)  # the run exists and resume is off
    assert "resume=True" in str(e.value) and "--" not in str(e.value)
    from fdalign.errors import as_command

    assert as_command("train", lambda: fdalign.finetune(cfg)) == 2
    assert "pass --resume to continue it or choose a new --out" in capsys.readouterr().err


def test_7_resume_with_other_settings_names_the_field_before_loading(oc_run, tmp_path, monkeypatch):
    import dataclasses

    import fdalign.backends

    out = tmp_path / "run"
    shutil.copytree(oc_run["run"].out, out)
    cfg = dataclasses.replace(oc_run["cfg"], out=str(out), resume=True, lr=5e-4, logger=[])

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the settings were compared")

    monkeypatch.setattr(fdalign.backends, "load_clip", no_load)
    with pytest.raises(
        fdalign.FDAlignError, match=r"settings differ from the run's config.yaml \(lr 0.001 -> 0.0005\)"
    ):
        fdalign.finetune(cfg)


def test_8_help_annotations_py_typed_and_predictions():
    import inspect
    import pydoc

    text = pydoc.render_doc(fdalign.TrainConfig, renderer=pydoc.plaintext)
    for f in ("spc_keep", "kl_direction", "logger"):
        help_text = fdalign.TrainConfig.__dataclass_fields__[f].metadata["help"]
        assert " ".join(help_text.split()[:6]) in " ".join(text.split()), f
    for fn in (fdalign.finetune, fdalign.export, fdalign.predict, fdalign.evaluate, fdalign.load_run):
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, fn
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), fn
    assert (Path(fdalign.__file__).parent / "py.typed").is_file()
    assert {"classnames", "classifier"} <= set(fdalign.Predictions.__dataclass_fields__)


def test_9_sweep_grid_from_the_command_line(capsys):
    from fdalign.cli.sweep import sweep_config
    from fdalign.experiments.sweep import preset_names

    parser = build_parser()
    args = parser.parse_args(
        ["sweep", "demo", "--out", "x", "--shots", "1", "4", "--seeds", "7", "--epochs", "1"]
        + ["--set", "world.train_per_class=4", "--set", "lr=0.01"]
    )
    cfg = sweep_config(args)
    assert (cfg.shots, cfg.seeds) == ([1, 4], [7])
    assert cfg.overrides["epochs"] == 1 and cfg.overrides["lr"] == 0.01
    assert cfg.world["train_per_class"] == 4
    cfg = sweep_config(parser.parse_args(["sweep", "demo", "--out", "x", "--set", "shots=[2]", "--set", "seeds=3"]))
    assert (cfg.shots, cfg.seeds) == ([2], [3])
    with pytest.raises(fdalign.FDAlignError, match="renders no world"):
        sweep_config(parser.parse_args(["sweep", "coop", "--out", "x", "--set", "world.seed=1"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in preset_names()) and len(preset_names()) >= 8
    no_wait = text.split("--no-wait", 2)[-1][:200]
    assert "(default: True)" not in no_wait and "(default: wait" in no_wait


def test_no_warning_from_a_plain_config():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fdalign.TrainConfig()
