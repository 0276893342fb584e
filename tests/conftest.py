"""Shared fixtures: tiny randomly initialised CLIP models, saved to disk the way a user's would be.

Nothing here downloads. Each fixture writes real files (an open_clip model-config JSON and a
checkpoint; a Hugging Face ``save_pretrained`` directory) and tests load them through the same
public path a user takes (``fdalign.backends.load_clip`` / the CLI).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

TINY_OPENCLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_openclip(tmp_path_factory) -> dict:
    """A tiny open_clip model: ``{"config": path to JSON, "checkpoint": path to .pt state dict}``."""
    import open_clip

    d = tmp_path_factory.mktemp("tiny_openclip")
    cfg_path = d / "tiny-clip.json"
    cfg_path.write_text(json.dumps(TINY_OPENCLIP_CFG))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_OPENCLIP_CFG)
    ckpt = d / "tiny-clip.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return {"config": cfg_path, "checkpoint": ckpt, "dir": d}


TINY_HF_LOGIT_SCALE = 25.0  # exp(logit_scale) stored in the tiny HF checkpoint
TINY_HF_MEAN = (0.5, 0.4, 0.3)  # deliberately not CLIP's, so a test can see where mean/std come from
TINY_HF_STD = (0.2, 0.25, 0.3)


def _tiny_clip_tokenizer(workdir: Path):
    """A real CLIPTokenizer over 141 tokens (characters, three merges, specials), built offline."""
    import string

    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    merges = [("t", "h"), ("th", "e</w>"), ("o", "f</w>")]
    tokens = chars + [c + "</w>" for c in chars] + ["the</w>", "th", "of</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (workdir / "vocab.json").write_text(json.dumps(vocab))
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer.from_pretrained(workdir)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> dict:
    """A tiny ``transformers.CLIPModel`` saved with ``save_pretrained`` (model, tokenizer, image processor).

    Returns ``{"dir": directory, "logit_scale": exp(logit_scale), "mean": ..., "std": ...}``; load it
    with ``load_clip("hf:" + str(dir))``.
    """
    import math

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = _tiny_clip_tokenizer(tmp_path_factory.mktemp("tiny_hf_vocab"))
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(TINY_HF_LOGIT_SCALE))
    d = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=list(TINY_HF_MEAN),
        image_std=list(TINY_HF_STD),
        resample=2,  # bilinear, again not the default
    ).save_pretrained(d)
    return {"dir": d, "logit_scale": TINY_HF_LOGIT_SCALE, "mean": TINY_HF_MEAN, "std": TINY_HF_STD}


@pytest.fixture(scope="session", autouse=True)
def own_prompt_cache(tmp_path_factory):
    """Each test process (each pytest-xdist worker too) keeps fdalign's caches in a folder of its own:
    never the user's ~/.cache/fdalign, never another process's half-written entries. Tests that need a
    cache of their own still set FDALIGN_CACHE (``cli_env``)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FDALIGN_CACHE", str(tmp_path_factory.mktemp("fdalign-cache")))
    yield
    mp.undo()


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """torch on ``n`` threads for the block: small models run no faster on more, and CI has two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def cli_session(root):
    """What ``cli_env`` gives a test, for module-scoped fixtures: the prompt-feature cache under
    ``root``, torch on one thread, both undone on exit."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FDALIGN_CACHE", str(Path(root) / "cache"))
    try:
        with torch_threads(1):
            yield
    finally:
        mp.undo()


@pytest.fixture
def one_thread():
    """torch on one thread for the test."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_per_module():
    """torch on one thread for a whole module, its module-scoped fixtures (whole sweeps) included."""
    with torch_threads(1):
        yield


@pytest.fixture
def cli_env(monkeypatch, tmp_path, one_thread):
    """For tests that run the CLI: the prompt-feature cache in the test's own folder (never the
    user's), torch on one thread."""
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
