"""Prompt features, class / spurious prototypes, the on-disk cache and the prototypes file."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fdalign.backends.base import CLIPBackend, ImageSpec
from fdalign.errors import FDAlignError
from fdalign.prompts import load_templates
from fdalign.prototypes import (
    build_prototypes,
    class_prototypes,
    encode_prompt_features,
    load_prototypes,
    save_prototypes,
    spurious_prototypes,
)
from fdalign.spc import SPCConfig, correct_spurious_prototypes


class FakeBackend(CLIPBackend):
    """A deterministic text encoder: each string hashes to its own random vector (not normalised).

    It counts calls and strings so tests can see what was (re-)encoded and in which batches.
    """

    def __init__(self, dim: int = 12, fingerprint: str = "fake-v1"):
        self.name, self.fingerprint, self.embed_dim = "fake", fingerprint, dim
        self.image_spec = ImageSpec(32, (0.5,) * 3, (0.5,) * 3)
        self.logit_scale = 100.0
        self._visual = nn.Linear(3, dim)
        self.calls: list[dict] = []

    @property
    def image_encoder(self):
        return self._visual

    def to(self, device):
        return self

    def vector(self, text: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        g = torch.Generator().manual_seed(seed)
        return (1.0 + torch.rand(1, generator=g)) * torch.randn(self.embed_dim, generator=g)

    def encode_text(self, texts, batch_size=256, progress=False):
        texts = list(texts)
        self.calls.append({"n": len(texts), "batch_size": batch_size, "progress": progress})
        return torch.stack([self.vector(t) for t in texts])

    @property
    def n_strings(self) -> int:
        return sum(c["n"] for c in self.calls)


CLASSES = ["cat", "dog", "sea lion", "airplane"]
TEMPLATES = ["a photo of a {}.", "art of the {}.", "a {} in a video game.", "itap of my {}.", "the toy {}."]


def _loop_prototypes(backend, classes, templates):
    """Independent computation: one encode call per prompt, plain Python means."""

    def enc(text):
        return F.normalize(backend.encode_text([text])[0], dim=0)

    cls = []
    for name in classes:
        acc = sum(enc(t.replace("{}", name)) for t in templates) / len(templates)
        cls.append(acc / acc.norm())
    spur = []
    for t in templates:
        acc = sum(enc(t.replace("{}", name)) for name in classes) / len(classes)
        spur.append(acc / acc.norm())
    return torch.stack(cls), torch.stack(spur)


def test_features_one_pass_normalised_class_major():
    be = FakeBackend()
    feats = encode_prompt_features(be, CLASSES, TEMPLATES, batch_size=7, cache_dir=False)
    assert feats.shape == (4, 5, 12) and feats.dtype == torch.float32
    assert len(be.calls) == 1 and be.calls[0] == {"n": 20, "batch_size": 7, "progress": False}
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(4, 5))
    torch.testing.assert_close(feats[2, 3], F.normalize(be.vector("itap of my sea lion."), dim=0))


def test_prototypes_match_per_class_and_per_template_loops():
    be = FakeBackend()
    feats = encode_prompt_features(be, CLASSES, TEMPLATES, cache_dir=False)
    want_cls, want_spur = _loop_prototypes(FakeBackend(), CLASSES, TEMPLATES)
    torch.testing.assert_close(class_prototypes(feats), want_cls)
    torch.testing.assert_close(spurious_prototypes(feats), want_spur)
    assert class_prototypes(feats).shape == (4, 12) and spurious_prototypes(feats).shape == (5, 12)


def test_prototype_functions_normalise_their_input():
    feats = encode_prompt_features(FakeBackend(), CLASSES, TEMPLATES, cache_dir=False)
    scaled = feats * torch.arange(1, 21, dtype=torch.float32).reshape(4, 5, 1)
    torch.testing.assert_close(class_prototypes(scaled), class_prototypes(feats))
    torch.testing.assert_close(spurious_prototypes(scaled), spurious_prototypes(feats))


def test_progress_auto_only_for_many_prompts():
    be = FakeBackend(dim=4)
    encode_prompt_features(be, [f"c{i}" for i in range(26)], load_templates("openai80"), cache_dir=False)
    encode_prompt_features(be, CLASSES, TEMPLATES, cache_dir=False)
    encode_prompt_features(be, CLASSES, TEMPLATES, cache_dir=False, progress=True)
    assert [c["progress"] for c in be.calls] == [True, False, True]


def test_cache_hit_and_keys(tmp_path):
    be = FakeBackend()
    first = encode_prompt_features(be, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert be.n_strings == 20 and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write cleaned up

    again = encode_prompt_features(be, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert be.n_strings == 20  # no re-encoding
    assert torch.equal(first, again)

    encode_prompt_features(be, CLASSES, TEMPLATES[:-1], cache_dir=tmp_path)
    assert be.n_strings == 20 + 16
    encode_prompt_features(be, CLASSES[::-1], TEMPLATES, cache_dir=tmp_path)
    assert be.n_strings == 36 + 20
    other = FakeBackend(fingerprint="fake-v2")
    encode_prompt_features(other, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert other.n_strings == 20
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_cache_disabled_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path))
    be = FakeBackend()
    encode_prompt_features(be, CLASSES, TEMPLATES, cache_dir=False)
    encode_prompt_features(be, CLASSES, TEMPLATES, cache_dir=False)
    assert be.n_strings == 40 and not any(tmp_path.rglob("*"))


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path))
    be = FakeBackend()
    encode_prompt_features(be, CLASSES, TEMPLATES)
    encode_prompt_features(be, CLASSES, TEMPLATES)
    assert be.n_strings == 20
    assert len(list((tmp_path / "prompt_features").glob("*.safetensors"))) == 1


def test_corrupt_cache_is_a_miss(tmp_path):
    be = FakeBackend()
    want = encode_prompt_features(be, CLASSES, TEMPLATES, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"garbage")
    got = encode_prompt_features(be, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert be.n_strings == 40 and torch.equal(got, want)
    assert torch.equal(load_file(str(path))["features"], want)  # rewritten


def test_build_save_load_roundtrip(tmp_path):
    be = FakeBackend(dim=8)
    templates = load_templates("openai80")
    classes = [f"class {i}" for i in range(6)]
    cfg = SPCConfig(keep=60, k=20, seed=0)
    protos = build_prototypes(be, classes, templates, spc=cfg, cache_dir=False)
    assert len(be.calls) == 1

    feats = encode_prompt_features(FakeBackend(dim=8), classes, templates, cache_dir=False)
    spc = correct_spurious_prototypes(spurious_prototypes(feats), cfg)
    torch.testing.assert_close(protos.class_prototypes, class_prototypes(feats))
    torch.testing.assert_close(protos.spurious_prototypes, spurious_prototypes(feats))
    torch.testing.assert_close(protos.corrected_prototypes, spc.prototypes)
    assert protos.dropped_templates == [templates[i] for i in spc.dropped] and len(protos.dropped_templates) == 20
    assert protos.kept_templates == [templates[i] for i in spc.kept]
    assert protos.loss_prototypes is protos.corrected_prototypes

    out = save_prototypes(tmp_path / "sub" / "p.safetensors", protos)
    raw = load_file(str(out))
    assert {k: tuple(v.shape) for k, v in raw.items()} == {
        "class_prototypes": (6, 8),
        "spurious_prototypes": (80, 8),
        "corrected_prototypes": (20, 8),
    }
    assert all(v.dtype == torch.float32 for v in raw.values())
    back = load_prototypes(out)
    for name in ("class_prototypes", "spurious_prototypes", "corrected_prototypes"):
        assert torch.equal(getattr(back, name), getattr(protos, name))
    assert back.templates == templates and back.dropped_templates == protos.dropped_templates
    assert back.kept_templates == protos.kept_templates and back.classnames == classes
    assert back.spc == cfg and back.fingerprint == "fake-v1"


def test_without_spc(tmp_path):
    protos = build_prototypes(FakeBackend(), CLASSES, TEMPLATES, spc=None, cache_dir=False)
    assert protos.corrected_prototypes is None and protos.dropped_templates == []
    assert protos.kept_templates == TEMPLATES and protos.loss_prototypes is protos.spurious_prototypes
    back = load_prototypes(save_prototypes(tmp_path / "p.safetensors", protos))
    assert back.corrected_prototypes is None and back.spc is None


def test_load_prototypes_errors(tmp_path):
    with pytest.raises(FDAlignError, match="does not exist"):
        load_prototypes(tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(FDAlignError, match="not an fdalign prototypes file"):
        load_prototypes(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(FDAlignError, match="not a readable"):
        load_prototypes(junk)


def test_empty_inputs():
    with pytest.raises(FDAlignError):
        encode_prompt_features(FakeBackend(), [], TEMPLATES, cache_dir=False)


# --- the real open_clip backend on the tiny random model -------------------------------------


@pytest.fixture(scope="module")
def tiny_backend(tiny_openclip):
    from fdalign.backends import load_clip

    return load_clip("tiny", pretrained=str(tiny_openclip["checkpoint"]), model_config=str(tiny_openclip["config"]))


def test_real_backend_batching_invariance_and_loops(tiny_backend):
    a = encode_prompt_features(tiny_backend, CLASSES, TEMPLATES, batch_size=3, cache_dir=False)
    b = encode_prompt_features(tiny_backend, CLASSES, TEMPLATES, batch_size=256, cache_dir=False)
    assert a.shape == (4, 5, tiny_backend.embed_dim)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    want_cls, want_spur = _loop_prototypes(tiny_backend, CLASSES, TEMPLATES)
    torch.testing.assert_close(class_prototypes(a), want_cls, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(spurious_prototypes(a), want_spur, rtol=1e-5, atol=1e-6)


def test_real_backend_cache(tiny_backend, tmp_path):
    a = encode_prompt_features(tiny_backend, CLASSES, TEMPLATES, cache_dir=tmp_path)
    b = encode_prompt_features(tiny_backend, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert torch.equal(a, b) and len(list(tmp_path.glob("*.safetensors"))) == 1
