"""``hf:<repo>`` without network fails at once with how to pre-download, and the HF preprocessing
follows the saved image processor (size, crop_size, do_center_crop), checked against the processor."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from fdalign.errors import FDAlignError


def test_hf_offline_env_fails_fast_with_the_download_command(monkeypatch):
    from fdalign.backends import hf, load_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "_hub_reachable", lambda timeout=3.0: pytest.fail("no probe when offline is set"))
    tried = []  # fails fast: no retries against an unreachable Hub, checked by count rather than "within N seconds"

    def no_network(address, *a, **k):
        tried.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(FDAlignError) as e:
        load_clip("hf:fdalign-test/not-a-cached-model")
    # huggingface_hub reads HF_HUB_OFFLINE when first imported: in a test process that imported it before this
    # test set the variable (another test ran first, e.g. under pytest-xdist) it may try once, never more
    assert len(tried) <= 1, tried
    assert str(e.value) == (
        "hf:fdalign-test/not-a-cached-model is not in the local Hugging Face cache and the Hub cannot be reached "
        "(HF_HUB_OFFLINE is set). Pre-download it on a machine with network: `hf download "
        "fdalign-test/not-a-cached-model` (then copy its cache, ~/.cache/huggingface or $HF_HOME, here), or save "
        "CLIPModel, tokenizer and image processor with save_pretrained(dir) and pass hf:/path/to/dir"
    )


def test_hf_no_network_is_detected_without_hub_retries(monkeypatch):
    from fdalign.backends import hf, load_clip

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(
        FDAlignError,
        match=r"cannot be reached \(no network connection to huggingface.co\)\. "
        r"Pre-download it .*`hf download fdalign-test/x`",
    ):
        load_clip("hf:fdalign-test/x")


def test_hub_probe_reports_a_closed_port(monkeypatch):
    from fdalign.backends.hf import _hub_reachable

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    assert _hub_reachable(timeout=1.0) is False


def _processor_variant(tiny_hf, tmp_path, **kw):
    from transformers import CLIPImageProcessor

    d = tmp_path / "hf"
    shutil.copytree(tiny_hf["dir"], d)
    proc = CLIPImageProcessor(image_mean=list(tiny_hf["mean"]), image_std=list(tiny_hf["std"]), resample=2, **kw)
    proc.save_pretrained(d)
    return d, proc


@pytest.mark.parametrize(
    "kw",
    [
        dict(size={"shortest_edge": 48}, crop_size={"height": 32, "width": 32}),
        dict(size={"height": 32, "width": 32}, do_center_crop=False),
    ],
)
def test_hf_eval_transform_matches_the_saved_processor(tiny_hf, tmp_path, kw):
    from fdalign.backends import load_clip

    d, proc = _processor_variant(tiny_hf, tmp_path, **kw)
    backend = load_clip(f"hf:{d}")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8))  # 70 wide, 45 high
    ours = backend.preprocess_eval()(img)
    theirs = torch.as_tensor(np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0]))
    assert ours.shape == theirs.shape == (3, 32, 32)
    torch.testing.assert_close(ours, theirs.float(), atol=0.03, rtol=0)


def test_processor_spec_errors_and_warnings():
    from types import SimpleNamespace

    from fdalign.backends.hf import _image_spec

    base = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3, do_resize=True)
    odd = SimpleNamespace(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 24}, do_center_crop=True, **base
    )
    with pytest.raises(FDAlignError, match="crop_size 32x24 is not square; CLIP needs square images"):
        _image_spec(odd, 32)
    big = SimpleNamespace(
        size={"shortest_edge": 64}, crop_size={"height": 48, "width": 48}, do_center_crop=True, **base
    )
    with pytest.warns(UserWarning, match="the image processor gives 48px images but the model was built for 32px"):
        spec = _image_spec(big, 32)
    assert (spec.size, spec.resize, spec.center_crop) == (48, 64, True)
