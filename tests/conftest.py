"""Shared fixtures: tiny randomly initialised CLIP models, saved to disk the way a user's would be.

Nothing here downloads. Each fixture writes real files (an open_clip model-config JSON and a
checkpoint; a Hugging Face ``save_pretrained`` directory) and tests load them through the same
public path a user takes (``fdalign.backends.load_clip`` / the CLI).
"""

from __future__ import annotations

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
