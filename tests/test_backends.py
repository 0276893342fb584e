"""CLIP backends: loading through ``load_clip`` exactly as a user would, checked against the raw libraries."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from fdalign.backends import ImageSpec, list_backends, load_clip, register_backend
from fdalign.backends import openclip as oc_backend
from fdalign.errors import FDAlignError

torch.set_num_threads(1)

TEXTS = ["a photo of a cat.", "the dog", "of 3 things!", "x", "a b c d e f g h i j k l m n o p q r s t u v w"]
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _bump_mtime(path, seconds=10):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


# ---------------------------------------------------------------------------------------------
# open_clip


@pytest.fixture(scope="module")
def oc(tiny_openclip):
    return load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])


@pytest.fixture(scope="module")
def oc_reference(tiny_openclip):
    """The same weights loaded with plain open_clip/torch, bypassing fdalign."""
    import open_clip

    cfg = json.loads(tiny_openclip["config"].read_text())
    model = open_clip.CLIP(**cfg)
    model.load_state_dict(torch.load(tiny_openclip["checkpoint"], weights_only=True)["state_dict"])
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return model.eval(), tokenizer


def test_openclip_custom_config_attributes(oc, tiny_openclip):
    assert oc.model_name == "tiny-clip"  # the JSON stem when no model name is given
    assert oc.pretrained == str(tiny_openclip["checkpoint"])
    assert oc.embed_dim == 32
    assert oc.image_spec == ImageSpec(32, OPENAI_MEAN, OPENAI_STD, "bicubic")
    assert len(oc.fingerprint) == 16


def test_openclip_encode_text_matches_open_clip(oc, oc_reference):
    model, tokenizer = oc_reference
    feats = oc.encode_text(TEXTS)
    assert feats.shape == (len(TEXTS), 32) and feats.dtype == torch.float32
    assert feats.device.type == "cpu" and not feats.requires_grad
    with torch.no_grad():
        ref = model.encode_text(tokenizer(TEXTS))
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)


def test_openclip_batching_matches_one_batch(oc):
    torch.testing.assert_close(oc.encode_text(TEXTS, batch_size=2), oc.encode_text(TEXTS), atol=1e-5, rtol=1e-5)
    assert oc.encode_text([]).shape[0] == 0


def test_openclip_image_encoder_matches_open_clip(oc, oc_reference):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = oc.image_encoder(x)
        ref = oc_reference[0].encode_image(x)  # normalize=False: raw projected features
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_openclip_only_image_tower_trains(oc):
    for name, p in oc.model.named_parameters():
        assert p.requires_grad == name.startswith("visual."), name
    oc.image_encoder(torch.randn(2, 3, 32, 32)).sum().backward()
    try:
        for name, p in oc.model.named_parameters():
            assert (p.grad is not None) == name.startswith("visual."), name
    finally:
        oc.model.zero_grad(set_to_none=True)


def test_openclip_grad_checkpointing_gives_same_gradients(oc):
    x = torch.randn(2, 3, 32, 32)
    w = oc.image_encoder.conv1.weight

    def grad():
        oc.image_encoder(x).square().sum().backward()
        g, w.grad = w.grad.clone(), None
        return g

    plain = grad()
    assert oc.set_grad_checkpointing(True) is True
    try:
        assert oc.image_encoder.transformer.grad_checkpointing
        torch.testing.assert_close(grad(), plain)
    finally:
        oc.set_grad_checkpointing(False)
        oc.model.zero_grad(set_to_none=True)


def test_openclip_logit_scale_from_checkpoint(tiny_openclip, tmp_path):
    sd = torch.load(tiny_openclip["checkpoint"], weights_only=True)["state_dict"]
    sd["logit_scale"] = torch.tensor(math.log(42.0))
    ckpt = tmp_path / "scaled.pt"
    torch.save(sd, ckpt)  # a bare state dict (no "state_dict" key) must load too
    backend = load_clip("tiny-clip", pretrained=str(ckpt), model_config=tiny_openclip["config"])
    assert backend.logit_scale == pytest.approx(42.0, rel=1e-5)


def test_openclip_safetensors_checkpoint(tiny_openclip, oc, tmp_path):
    from safetensors.torch import save_file

    sd = torch.load(tiny_openclip["checkpoint"], weights_only=True)["state_dict"]
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, ckpt)
    backend = load_clip(None, pretrained=str(ckpt), model_config=tiny_openclip["config"])
    torch.testing.assert_close(backend.encode_text(TEXTS), oc.encode_text(TEXTS))


def test_openclip_fingerprint_tracks_checkpoint(tiny_openclip, tmp_path):
    ckpt = tmp_path / "tiny-clip.pt"
    shutil.copy(tiny_openclip["checkpoint"], ckpt)
    cfg = tiny_openclip["config"]
    first = load_clip(None, pretrained=str(ckpt), model_config=cfg).fingerprint
    assert load_clip(None, pretrained=str(ckpt), model_config=cfg).fingerprint == first

    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    sd["visual.proj"] += 1.0
    torch.save({"state_dict": sd}, ckpt)
    _bump_mtime(ckpt)
    assert load_clip(None, pretrained=str(ckpt), model_config=cfg).fingerprint != first

    other_cfg = tmp_path / "tiny-clip.json"
    other_cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "quick_gelu": True}))
    assert load_clip(None, pretrained=str(ckpt), model_config=other_cfg).fingerprint != first


def test_openclip_explicit_random_init(tiny_openclip):
    torch.manual_seed(1)
    a = load_clip(None, pretrained="random", model_config=tiny_openclip["config"])
    torch.manual_seed(1)
    b = load_clip(None, pretrained="random", model_config=tiny_openclip["config"])
    torch.manual_seed(2)
    c = load_clip(None, pretrained="random", model_config=tiny_openclip["config"])
    assert a.pretrained == "random"
    assert a.fingerprint == b.fingerprint != c.fingerprint  # random weights are keyed by content


def test_custom_config_does_not_shadow_open_clip_name(tiny_openclip):
    import open_clip

    builtin = open_clip.get_model_config("ViT-B-32")
    backend = load_clip("ViT-B-32", pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])
    assert backend.embed_dim == 32
    assert open_clip.get_model_config("ViT-B-32") == builtin


def _write_builtin(tiny_openclip, folder, name="fdalign-tiny", mean=(0.1, 0.2, 0.3)):
    from safetensors.torch import save_file

    sd = torch.load(tiny_openclip["checkpoint"], weights_only=True)["state_dict"]
    save_file({k: v.half().contiguous() for k, v in sd.items()}, folder / f"{name}.safetensors")
    cfg = json.loads(tiny_openclip["config"].read_text())
    wrapped = {"model_cfg": cfg, "preprocess_cfg": {"mean": list(mean), "std": [0.5, 0.5, 0.5]}}
    (folder / f"{name}.json").write_text(json.dumps(wrapped))
    return sd


def test_builtin_model_from_assets(tiny_openclip, tmp_path, monkeypatch):
    sd = _write_builtin(tiny_openclip, tmp_path)
    (tmp_path / "fdalign-half.json").write_text("{}")  # no weights beside it: not a built-in
    monkeypatch.setenv(oc_backend.ASSETS_ENV, str(tmp_path))
    assert list(oc_backend.builtin_models()) == ["fdalign-tiny"]

    backend = load_clip("fdalign-tiny")
    assert backend.name == "fdalign-tiny" and backend.pretrained is None
    assert backend.image_spec == ImageSpec(32, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5), "bicubic")
    w = backend.image_encoder.conv1.weight
    assert w.dtype == torch.float32  # stored fp16, trained in fp32
    torch.testing.assert_close(w.detach(), sd["visual.conv1.weight"].half().float(), atol=0, rtol=0)


def test_missing_builtin_model_is_a_clear_error(tiny_openclip, tmp_path, monkeypatch):
    monkeypatch.setenv(oc_backend.ASSETS_ENV, str(tmp_path))
    (tmp_path / "fdalign-world.json").write_text(tiny_openclip["config"].read_text())
    with pytest.raises(FDAlignError) as e:
        load_clip("fdalign-world")
    assert str(tmp_path / "fdalign-world.safetensors") in str(e.value)


def test_assets_dir_defaults_to_package(monkeypatch):
    import fdalign

    monkeypatch.delenv(oc_backend.ASSETS_ENV, raising=False)
    assert oc_backend.assets_dir() == Path(fdalign.__file__).parent / "assets"


def test_local_dir_scheme_passes_through(tiny_openclip, oc, tmp_path):
    from safetensors.torch import save_file

    sd = torch.load(tiny_openclip["checkpoint"], weights_only=True)["state_dict"]
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "open_clip_model.safetensors")
    cfg = json.loads(tiny_openclip["config"].read_text())
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.3, 0.3, 0.3], "std": [0.2, 0.2, 0.2]}})
    )
    backend = load_clip(f"local-dir:{tmp_path}")
    assert backend.image_spec.mean == (0.3, 0.3, 0.3)
    torch.testing.assert_close(backend.encode_text(TEXTS), oc.encode_text(TEXTS))


# ---------------------------------------------------------------------------------------------
# open_clip errors


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(FDAlignError) as e:
        load_clip("ViT-B-3", pretrained="openai")
    msg = str(e.value)
    assert "'ViT-B-3'" in msg and "ViT-B-32" in msg and "open_clip.list_models()" in msg


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(FDAlignError) as e:
        load_clip("ViT-B-32", pretrained="not_a_tag")
    msg = str(e.value)
    assert "'not_a_tag'" in msg and "openai" in msg and "laion2b_s34b_b79k" in msg


def test_missing_checkpoint_names_the_path(tiny_openclip, tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    for kwargs in ({"model": "ViT-B-32"}, {"model": None, "model_config": tiny_openclip["config"]}):
        with pytest.raises(FDAlignError) as e:
            load_clip(pretrained=str(missing), **kwargs)
        assert str(missing) in str(e.value)


def test_custom_config_without_weights_is_an_error(tiny_openclip):
    with pytest.raises(FDAlignError) as e:
        load_clip(None, model_config=tiny_openclip["config"])
    msg = str(e.value)
    assert str(tiny_openclip["config"]) in msg and "--pretrained random" in msg


def test_open_clip_name_without_pretrained_is_an_error():
    with pytest.raises(FDAlignError, match="needs --pretrained.*laion2b_s34b_b79k"):
        load_clip("ViT-B-32")


def test_mismatched_checkpoint_is_an_error(tiny_openclip, tmp_path):
    sd = torch.load(tiny_openclip["checkpoint"], weights_only=True)["state_dict"]
    del sd["visual.proj"]
    ckpt = tmp_path / "broken.pt"
    torch.save(sd, ckpt)
    with pytest.raises(FDAlignError) as e:
        load_clip(None, pretrained=str(ckpt), model_config=tiny_openclip["config"])
    assert str(ckpt) in str(e.value) and "visual.proj" in str(e.value)


def test_download_failure_says_how_to_work_offline(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs.get("repo_id"))
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache (offline).")

    monkeypatch.setattr(sys.modules["open_clip.pretrained"], "hf_hub_download", offline)
    # the host answers, so the download is tried (without network it is not: test_messages.py)
    monkeypatch.setattr("fdalign.backends.hub.host_reachable", lambda *a, **k: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FDAlignError) as e:
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    msg = str(e.value)
    assert calls and "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg
    assert "--pretrained /path/to/checkpoint" in msg


def test_hf_hub_scheme_offline_is_an_error(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("outgoing traffic has been disabled")

    monkeypatch.setattr(sys.modules["open_clip.pretrained"], "hf_hub_download", offline)
    with pytest.raises(FDAlignError) as e:
        load_clip("hf-hub:someone/some-clip")
    assert "hf-hub:someone/some-clip" in str(e.value) and "local-dir:" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Hugging Face


@pytest.fixture(scope="module")
def hf(tiny_hf):
    return load_clip("hf:" + str(tiny_hf["dir"]))


@pytest.fixture(scope="module")
def hf_reference(tiny_hf):
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(tiny_hf["dir"], local_files_only=True).eval()
    return model, CLIPTokenizer.from_pretrained(tiny_hf["dir"], local_files_only=True)


def test_hf_attributes(hf, tiny_hf):
    assert hf.name == "hf:" + str(tiny_hf["dir"].resolve())
    assert hf.embed_dim == 32
    assert hf.logit_scale == pytest.approx(tiny_hf["logit_scale"], rel=1e-5)
    assert hf.image_spec == ImageSpec(32, tiny_hf["mean"], tiny_hf["std"], "bilinear")


def test_hf_encode_text_matches_eos_pooling(hf, hf_reference):
    """Each text alone (no padding): CLIP's text feature is the final hidden state at EOS, projected."""
    model, tokenizer = hf_reference
    feats = hf.encode_text(TEXTS, batch_size=256)
    assert feats.shape == (len(TEXTS), 32) and feats.dtype == torch.float32 and not feats.requires_grad
    with torch.no_grad():
        for text, f in zip(TEXTS, feats):
            ids = tokenizer(text, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
            assert ids[0, -1] == tokenizer.eos_token_id
            hidden = model.text_model(input_ids=ids).last_hidden_state[0, -1]
            torch.testing.assert_close(f, model.text_projection(hidden), atol=1e-5, rtol=1e-5)


def test_hf_batching_matches_one_batch(hf):
    torch.testing.assert_close(hf.encode_text(TEXTS, batch_size=2), hf.encode_text(TEXTS), atol=1e-5, rtol=1e-5)


def test_hf_image_encoder_matches_get_image_features(hf, hf_reference):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = hf.image_encoder(x)
        ref = hf_reference[0].get_image_features(pixel_values=x)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_hf_only_image_tower_trains(hf):
    def trainable(name):
        return name.startswith(("vision_model.", "visual_projection."))

    for name, p in hf.model.named_parameters():
        assert p.requires_grad == trainable(name), name
    assert {n for n, _ in hf.image_encoder.named_parameters()} == {
        n for n, _ in hf.model.named_parameters() if trainable(n)
    }
    hf.image_encoder(torch.randn(2, 3, 32, 32)).sum().backward()
    try:
        for name, p in hf.model.named_parameters():
            assert (p.grad is not None) == trainable(name), name
    finally:
        hf.model.zero_grad(set_to_none=True)


def test_hf_grad_checkpointing_gives_same_gradients(hf):
    x = torch.randn(2, 3, 32, 32)
    w = hf.model.visual_projection.weight
    hf.image_encoder.train()

    def grad():
        hf.image_encoder(x).square().sum().backward()
        g, w.grad = w.grad.clone(), None
        return g

    try:
        plain = grad()
        assert hf.set_grad_checkpointing(True) is True
        assert hf.model.vision_model.encoder.gradient_checkpointing
        torch.testing.assert_close(grad(), plain)
    finally:
        hf.set_grad_checkpointing(False)
        hf.image_encoder.eval()
        hf.model.zero_grad(set_to_none=True)


def test_hf_fingerprint_tracks_weights(tiny_hf, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "copy"
    shutil.copytree(tiny_hf["dir"], d)
    first = load_clip(f"hf:{d}")
    assert load_clip(f"hf:{d}").fingerprint == first.fingerprint
    weights = d / "model.safetensors"
    sd = load_file(weights)
    sd["visual_projection.weight"] = sd["visual_projection.weight"] * 2
    save_file(sd, weights, metadata={"format": "pt"})
    _bump_mtime(weights)
    second = load_clip(f"hf:{d}")
    assert second.fingerprint != first.fingerprint
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(second.image_encoder(x), 2 * first.image_encoder(x), atol=1e-5, rtol=1e-5)


def test_missing_hf_dir_is_an_error(tmp_path):
    missing = tmp_path / "no_such_clip"
    with pytest.raises(FDAlignError) as e:
        load_clip(f"hf:{missing}")
    assert str(missing) in str(e.value) and "save_pretrained" in str(e.value)


def test_hf_dir_without_model_is_an_error(tmp_path):
    with pytest.raises(FDAlignError) as e:
        load_clip(f"hf:{tmp_path}")
    assert str(tmp_path) in str(e.value) and "save_pretrained" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_dispatches_on_prefix():
    import fdalign.backends as backends

    assert {"open_clip", "hf"} <= set(list_backends())
    seen = {}

    @register_backend("dummy")
    def load_dummy(model, **kwargs):
        seen.update(model=model, **kwargs)
        return "sentinel"

    try:
        assert load_clip("dummy:some/thing", precision="bf16") == "sentinel"
        assert seen["model"] == "some/thing" and seen["precision"] == "bf16"
    finally:
        backends._BACKENDS.pop("dummy")
    assert "dummy" not in list_backends()


def test_bad_precision_is_an_error():
    with pytest.raises(FDAlignError, match="fp32"):
        load_clip("ViT-B-32", pretrained="openai", precision="fp8")
