"""``fdalign train --trainable lora`` end to end through the CLI on the tiny models, then ``eval`` / ``predict`` /
``export`` of the run: the exported checkpoints load in plain open_clip / transformers in a fresh interpreter where
``import peft`` fails, and ``--adapter-only`` writes an adapter peft loads back."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _synth import make_imagefolder, write_templates
from fdalign.cli import main

CLASSES = ["red apple", "green leaf", "blue sky"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy."]
SRC = Path(__file__).resolve().parents[1] / "src"

# a fresh interpreter in which `import peft` raises, while find_spec still answers (transformers asks it)
BLOCK_PEFT = """
import sys, importlib.abc, importlib.util
class _NoPeft(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name.split(".")[0] == "peft" else None
    def create_module(self, spec):
        raise ModuleNotFoundError("No module named 'peft' (blocked by the test)", name=spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, _NoPeft())
try:
    import peft
    raise SystemExit("peft was importable")
except ImportError:
    pass
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FDALIGN_CACHE", str(d / "cache"))
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        data = make_imagefolder(d / "id", CLASSES, n_train=4, n_test=2, seed=0)
        tfile = write_templates(d / "templates.txt", TEMPLATES)
        yield {"dir": d, "data": data, "templates": tfile}
        torch.set_num_threads(n)


def _train(env, out, *model_args):
    args = ["train", *model_args, "--data", str(env["data"]), "--shots", "2", "--epochs", "2", "--batch-size", "3"]
    args += ["--num-workers", "0", "--templates", str(env["templates"]), "--spc-keep", "3", "--spc-k", "2"]
    args += ["--wiseft-alphas", "0", "0.5", "1", "--device", "cpu", "--lr", "5e-2", "--no-progress"]
    args += ["--trainable", "lora", "--lora-rank", "2", "--lora-alpha", "4", "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def oc_run(env, tiny_openclip):
    return _train(
        env,
        env["dir"] / "oc",
        "--model-config",
        str(tiny_openclip["config"]),
        "--pretrained",
        str(tiny_openclip["checkpoint"]),
    )


@pytest.fixture(scope="module")
def hf_run(env, tiny_hf):
    return _train(env, env["dir"] / "hf", "--model", f"hf:{tiny_hf['dir']}", "--lora-targets", "qkv,mlp")


def _images(seed=0):
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _run_features(run, alpha=None):
    """The run's image features as fdalign computes them (model file merged onto the base, WiSE-FT mixed)."""
    from fdalign.train.run import load_run

    loaded = load_run(run)
    enc = loaded.backend.image_encoder if alpha is None else loaded.wiseft(alpha)[0]
    with torch.no_grad():
        return enc.eval()(_images())


def _peft_free(code: str, tmp_path) -> torch.Tensor:
    out = tmp_path / "feats.pt"
    script = (
        BLOCK_PEFT
        + code
        + f"\ntorch.save(feats, {str(out)!r})\nassert 'peft' not in sys.modules or sys.modules['peft'] is None\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(out, weights_only=True)


def test_cli_lora_run_records_its_settings_and_evaluates(oc_run):
    cfg = (oc_run / "config.yaml").read_text()
    assert "trainable: lora" in cfg and "lora_rank: 2" in cfg
    metrics = json.loads((oc_run / "metrics.json").read_text())["metrics"]["test"]
    assert {"fine-tuned", "zero-shot"} <= set(metrics)
    # the run moved (the adapters learned) and only the attention layers of the image tower did
    from fdalign.train.run import load_run

    loaded = load_run(oc_run)
    zs = loaded.zero_shot_encoder_state
    moved = [k for k, v in loaded.backend.image_encoder.state_dict().items() if not torch.equal(v, zs[k])]
    assert moved and all(".attn." in k for k in moved)


def test_open_clip_export_loads_without_peft(oc_run, tmp_path):
    out = tmp_path / "exp"
    assert main(["export", str(oc_run), "--format", "open_clip", "--out", str(out), "--wiseft-alpha", "0.5"]) == 0
    torch.save(_images(), tmp_path / "x.pt")
    code = f"""
import torch, open_clip
m, _, _ = open_clip.create_model_and_transforms("local-dir:{out}")
with torch.no_grad():
    feats = m.eval().encode_image(torch.load({str(tmp_path / "x.pt")!r}))
"""
    got = _peft_free(code, tmp_path)
    torch.testing.assert_close(got, _run_features(oc_run, 0.5), rtol=0, atol=1e-5)


def test_hf_export_loads_without_peft_and_adapter_only_loads_with_peft(hf_run, tiny_hf, tmp_path):
    out = tmp_path / "exp_hf"
    assert main(["export", str(hf_run), "--format", "hf", "--out", str(out), "--adapter-only"]) == 0
    torch.save(_images(), tmp_path / "x.pt")
    code = f"""
import torch
from transformers import CLIPModel
m = CLIPModel.from_pretrained({str(out)!r}).eval()
with torch.no_grad():
    f = m.get_image_features(pixel_values=torch.load({str(tmp_path / "x.pt")!r}))
feats = f if isinstance(f, torch.Tensor) else f.pooler_output
"""
    want = _run_features(hf_run)
    torch.testing.assert_close(_peft_free(code, tmp_path), want, rtol=0, atol=1e-5)

    # the adapter in peft's own format, applied by peft to the plain base CLIPModel, gives the same features
    from peft import PeftModel
    from transformers import CLIPModel

    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 2
    base = CLIPModel.from_pretrained(tiny_hf["dir"]).eval()
    with torch.no_grad():
        before = base.get_image_features(pixel_values=_images())
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        f = peft_model.base_model.model.get_image_features(pixel_values=_images())
    f = f if isinstance(f, torch.Tensor) else f.pooler_output
    before = before if isinstance(before, torch.Tensor) else before.pooler_output
    torch.testing.assert_close(f, want, rtol=0, atol=1e-5)
    assert (before - want).abs().max() > 1e-4  # the adapter is what makes the difference


def test_adapter_only_wiseft_and_open_clip_tower(oc_run, tiny_openclip, tmp_path):
    """On open_clip the adapter fits the image tower (model.visual); a WiSE-FT alpha scales peft's lora_alpha."""
    import open_clip
    from peft import PeftModel

    from fdalign.backends import load_clip

    out = tmp_path / "exp"
    assert (
        main(
            [
                "export",
                str(oc_run),
                "--format",
                "open_clip",
                "--out",
                str(out),
                "--adapter-only",
                "--wiseft-alpha",
                "0.25",
            ]
        )
        == 0
    )
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["lora_alpha"] == pytest.approx(1.0)
    visual = load_clip(
        None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"]
    ).image_encoder
    m = PeftModel.from_pretrained(visual, str(out / "adapter")).eval()
    with torch.no_grad():
        got = m(_images())
    torch.testing.assert_close(got, _run_features(oc_run, 0.25), rtol=0, atol=1e-5)
    assert open_clip  # the plain checkpoint beside it is tested without peft above


def test_adapter_only_refuses_a_full_run(env, tiny_openclip, tmp_path, capsys):
    run = tmp_path / "full"
    args = ["train", "--model-config", str(tiny_openclip["config"]), "--pretrained", str(tiny_openclip["checkpoint"])]
    args += ["--data", str(env["data"]), "--shots", "2", "--epochs", "1", "--batch-size", "3", "--num-workers", "0"]
    args += ["--templates", str(env["templates"]), "--spc-keep", "3", "--spc-k", "2", "--device", "cpu"]
    args += ["--no-progress", "--wiseft-alphas", "1", "--trainable", "projection", "--out", str(run)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--format", "open_clip", "--out", str(tmp_path / "e"), "--adapter-only"]) == 2
    assert "drop --adapter-only" in capsys.readouterr().err


def test_cli_refuses_a_bad_trainable_on_one_line(env, tiny_openclip, tmp_path, capsys):
    args = ["train", "--model-config", str(tiny_openclip["config"]), "--pretrained", str(tiny_openclip["checkpoint"])]
    args += ["--data", str(env["data"]), "--trainable", "last-blocks:two", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trainable" in err[0] and "last-blocks:2" in err[0]
