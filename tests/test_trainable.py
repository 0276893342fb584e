"""--trainable: which parameters learn (full, LoRA through peft, last blocks, norms, biases, projection), f0 as
the same encoder with its adapters off, merging, WiSE-FT as the scaled low-rank update."""

import copy
import csv

import pytest
import torch
from torch.utils.data import TensorDataset

from fdalign.backends import load_clip
from fdalign.errors import FDAlignError
from fdalign.prototypes import build_prototypes
from fdalign.spc import SPCConfig
from fdalign.train import trainer as trainer_mod
from fdalign.train.checkpoint import load_checkpoint
from fdalign.train.config import TrainConfig
from fdalign.train.run import load_model
from fdalign.train.trainable import (
    TrainableSpec,
    adapters_disabled,
    apply_trainable,
    frozen_view,
    has_adapters,
    lora_target_names,
    merge_adapters,
    scale_adapters,
    trainable_parameter_names,
)
from fdalign.train.trainer import train
from fdalign.train.wiseft import interpolate_module, interpolate_state_dicts

CLASSES = ["red apple", "green leaf", "blue sky"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy.", "a blurry {}."]

pytestmark = pytest.mark.usefixtures("one_thread")


def _openclip(tiny_openclip):
    return load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])


def _hf(tiny_hf):
    return load_clip("hf:" + str(tiny_hf["dir"]))


def _lora(**kw):
    return TrainableSpec.parse("lora", **kw)


def _randomise_adapters(module, seed=0):
    """peft starts B at 0 (the adapted model = the base); tests need an update that changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def protos(tiny_openclip):
    return build_prototypes(_openclip(tiny_openclip), CLASSES, TEMPLATES, spc=SPCConfig(keep=4, k=2), cache_dir=False)


def _tensors(n_per_class=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_per_class * len(CLASSES), 3, 32, 32, generator=g)
    y = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    return TensorDataset(x, y)


def _cfg(**kw):
    base = dict(
        shots=4,
        epochs=2,
        batch_size=4,
        num_workers=0,
        device="cpu",
        progress=False,
        spc_keep=4,
        spc_k=2,
        tensorboard=False,
        lr=1e-2,
        beta=2.0,
    )
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------- parsing


def test_spec_parsing_and_one_line_errors():
    assert TrainableSpec.parse("last-blocks:2").blocks == 2
    assert TrainableSpec.parse("LoRA", lora_rank=4).lora_rank == 4
    for bad, field in [
        ("lora-ish", "trainable"),
        ("last-blocks:0", "trainable"),
        ("last-blocks:x", "trainable"),
        ("last-blocks:N", "trainable"),
    ]:
        with pytest.raises(FDAlignError, match=field):
            TrainableSpec.parse(bad)
    with pytest.raises(FDAlignError, match="lora_rank"):
        TrainConfig(trainable="lora", lora_rank=0).validate()
    with pytest.raises(FDAlignError, match="lora_dropout"):
        TrainConfig(trainable="lora", lora_dropout=1.0).validate()
    with pytest.raises(FDAlignError, match="lora_alpha"):
        TrainConfig(trainable="lora", lora_alpha=0).validate()
    TrainConfig(trainable="lora", lora_rank=0).validate() if False else None
    TrainConfig(trainable="full", lora_rank=0).validate()  # LoRA settings are not read without LoRA


def test_config_hash_of_a_full_run_is_unchanged_by_the_new_fields():
    """Runs made before --trainable existed must still resume: the hash of a full run ignores the LoRA fields."""
    a = TrainConfig()
    assert trainer_mod.config_hash(a) == trainer_mod.config_hash(TrainConfig(lora_rank=3))
    assert trainer_mod.config_hash(a) != trainer_mod.config_hash(TrainConfig(trainable="lora"))
    assert trainer_mod.config_hash(TrainConfig(trainable="lora")) != trainer_mod.config_hash(
        TrainConfig(trainable="lora", lora_rank=3)
    )


# ---------------------------------------------------------------------------------------------- targets


def test_lora_targets_on_open_clip_and_hf_image_and_text_towers(tiny_openclip, tiny_hf):
    oc = _openclip(tiny_openclip)
    assert lora_target_names(oc.image_encoder, "attn") == [
        "transformer.resblocks.0.attn",
        "transformer.resblocks.1.attn",
    ]
    # the text tower of a whole open_clip model: its own resblocks (and not the image tower's when asked by name)
    text = lora_target_names(oc.model.transformer, "attn")
    assert text == ["resblocks.0.attn", "resblocks.1.attn"]
    assert lora_target_names(oc.image_encoder, "mlp") == [
        f"transformer.resblocks.{i}.mlp.{n}" for i in range(2) for n in ("c_fc", "c_proj")
    ]
    hf = _hf(tiny_hf)
    names = lora_target_names(hf.image_encoder, "attn")
    assert len(names) == 2 * 4 and all(n.rsplit(".", 1)[1] in ("q_proj", "k_proj", "v_proj", "out_proj") for n in names)
    assert len(lora_target_names(hf.image_encoder, "qkv")) == 2 * 3
    assert len(lora_target_names(hf.image_encoder, "attn,mlp")) == 2 * 6
    text_hf = lora_target_names(hf.model.text_model, "qkv")
    assert len(text_hf) == 2 * 3 and all(".self_attn." in n for n in text_hf)
    with pytest.raises(FDAlignError, match="lora_targets"):
        lora_target_names(hf.image_encoder, "nosuchlayer")


@pytest.mark.parametrize("which", ["openclip", "hf"])
def test_lora_trains_only_adapters_and_starts_as_the_base(which, tiny_openclip, tiny_hf):
    b = _openclip(tiny_openclip) if which == "openclip" else _hf(tiny_hf)
    enc = b.image_encoder
    base = copy.deepcopy(enc).eval()
    x = torch.randn(3, 3, 32, 32)
    assert apply_trainable(enc, _lora(lora_rank=2)) is enc and has_adapters(enc)
    enc.eval()
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    torch.testing.assert_close(enc(x), base(x), rtol=0, atol=1e-6)  # B = 0: the base model


# ---------------------------------------------------------------------------------------------- f0


@pytest.mark.parametrize("which", ["openclip", "hf"])
def test_f0_is_the_same_module_with_adapters_off(which, tiny_openclip, tiny_hf):
    """f0 built from the adapted encoder equals a deep copy of the pretrained one on a batch (1e-6), holds no
    weights of its own, and leaves the encoder's mode and trainable flags as they were."""
    b = _openclip(tiny_openclip) if which == "openclip" else _hf(tiny_hf)
    enc = b.image_encoder
    f0_copy = trainer_mod.frozen_copy(enc, "eval")
    apply_trainable(enc, _lora(lora_rank=2))
    _randomise_adapters(enc)
    x = torch.randn(4, 3, 32, 32)
    f0 = trainer_mod._frozen_copy(enc, "eval")
    assert not list(f0.state_dict())  # no second copy of the weights
    enc.train()
    flags = {n: p.requires_grad for n, p in enc.named_parameters()}
    with torch.inference_mode():
        out0 = f0(x)
    torch.testing.assert_close(out0, f0_copy(x), rtol=0, atol=1e-6)
    assert enc.training and {n: p.requires_grad for n, p in enc.named_parameters()} == flags
    enc.eval()
    assert (enc(x) - out0).abs().max() > 1e-3  # the adapters are back on after the f0 pass
    with adapters_disabled(enc):
        torch.testing.assert_close(enc(x), out0, rtol=0, atol=1e-6)


def test_mha_base_weights_do_not_drift(tiny_openclip):
    """peft's MultiheadAttention adds and subtracts B A around every call; the base weights must come back bit for
    bit, or the "frozen" f0 slowly moves."""
    enc = _openclip(tiny_openclip).image_encoder
    apply_trainable(enc, _lora(lora_rank=2))
    _randomise_adapters(enc)
    before = {k: v.clone() for k, v in enc.state_dict().items() if ".lora_" not in k}
    x = torch.randn(2, 3, 32, 32)
    for _ in range(5):
        enc(x).square().sum().backward()
    after = enc.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_f0_cache_key_and_answers_are_those_of_the_full_run(tiny_openclip, protos, tmp_path):
    """A LoRA run fingerprints f0 before its adapters exist: it reads the f0 answers a full run stored,
    and ends bitwise where it ends without the cache."""
    ds = _tensors()
    cache = tmp_path / "f0cache"
    full = _cfg(epochs=1, f0_cache=str(cache))
    train(_openclip(tiny_openclip), ds, _tensors(seed=1), protos, full, tmp_path / "full", data_key="k")
    lora = _cfg(epochs=1, trainable="lora", lora_rank=2)
    hit = train(
        _openclip(tiny_openclip),
        ds,
        _tensors(seed=1),
        protos,
        _cfg(epochs=1, trainable="lora", lora_rank=2, f0_cache=str(cache)),
        tmp_path / "hit",
        data_key="k",
    )
    assert hit.f0_cache_epochs_read == 1
    plain = train(_openclip(tiny_openclip), ds, _tensors(seed=1), protos, lora, tmp_path / "plain", data_key="k")
    for k, v in plain.encoder.state_dict().items():
        assert torch.equal(v, hit.encoder.state_dict()[k]), k


# ---------------------------------------------------------------------------------------------- training


def test_lora_training_optimiser_model_file_and_f0_without_copy(tiny_openclip, protos, tmp_path, monkeypatch):
    b = _openclip(tiny_openclip)
    base = {k: v.clone() for k, v in b.image_encoder.state_dict().items()}
    seen = {}
    real = trainer_mod._phase_optimizer

    def spy(cfg, phase, encoder, head):
        named, opt = real(cfg, phase, encoder, head)
        seen["names"] = [n for n, _ in named]
        seen["opt"] = sum(p.numel() for g in opt.param_groups for p in g["params"])
        return named, opt

    monkeypatch.setattr(trainer_mod, "_phase_optimizer", spy)
    copies = []
    monkeypatch.setattr(trainer_mod, "frozen_copy", lambda *a, **k: copies.append(1))
    res = train(b, _tensors(), _tensors(seed=1), protos, _cfg(trainable="lora", lora_rank=2), tmp_path / "run")
    assert not copies  # f0 was never deep-copied
    enc_names = [n for n in seen["names"] if not n.startswith("head.")]
    assert enc_names and all(".lora_" in n for n in enc_names)
    assert seen["opt"] == sum(p.numel() for n, p in _adapted(tiny_openclip).named_parameters() if ".lora_" in n) + sum(
        p.numel() for p in res.head.parameters()
    )
    # after training the backend's encoder is plain again, merged, and equals the model file
    assert not has_adapters(b.image_encoder) and res.encoder is b.image_encoder
    assert set(res.encoder.state_dict()) == set(base)
    saved = load_model(tmp_path / "run" / "model" / "best.safetensors")
    assert set(saved.encoder) == set(base)
    assert saved.adapter and all(".lora_" in k for k in saved.adapter)
    assert saved.metadata["trainable"]["kind"] == "lora"
    changed = [k for k in base if not torch.equal(base[k], saved.encoder[k])]
    assert changed and all(".attn." in k for k in changed)  # only the adapted layers moved
    for k, v in saved.encoder.items():
        assert torch.equal(v, res.encoder.state_dict()[k].float()), k


def _adapted(tiny_openclip, rank=2):
    enc = _openclip(tiny_openclip).image_encoder
    return apply_trainable(enc, _lora(lora_rank=rank))


def test_lora_resume_is_bitwise(tiny_openclip, protos, tmp_path):
    cfg = _cfg(epochs=3, trainable="lora", lora_rank=2, lora_dropout=0.1, lora_targets="attn,mlp", head="trainable")
    full = train(_openclip(tiny_openclip), _tensors(), _tensors(seed=1), protos, cfg, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill(epoch, _):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(_openclip(tiny_openclip), _tensors(), _tensors(seed=1), protos, cfg, tmp_path / "r", on_epoch_end=kill)
    ck = load_checkpoint(tmp_path / "r" / "checkpoint")
    assert any(".lora_" in k for k in ck.encoder)
    import dataclasses

    resumed = train(
        _openclip(tiny_openclip),
        _tensors(),
        _tensors(seed=1),
        protos,
        dataclasses.replace(cfg, resume=True),
        tmp_path / "r",
    )
    assert resumed.val_top1 == full.val_top1
    for k, v in full.encoder.state_dict().items():
        assert torch.equal(v, resumed.encoder.state_dict()[k]), k
    a, c = load_checkpoint(tmp_path / "full" / "checkpoint"), load_checkpoint(tmp_path / "r" / "checkpoint")
    for k, v in a.encoder.items():
        assert torch.equal(v, c.encoder[k]), k

    def rows(run):
        with open(tmp_path / run / "log.csv") as f:
            return [(r["step"], r["ce"], r["kl"]) for r in csv.DictReader(f)]

    assert rows("full") == rows("r")


@pytest.mark.parametrize("kind", ["last-blocks:1", "layernorm", "bias", "projection"])
def test_partial_runs_move_only_their_parameters(kind, tiny_openclip, protos, tmp_path):
    b = _openclip(tiny_openclip)
    base = {k: v.clone() for k, v in b.image_encoder.state_dict().items()}
    want = set(trainable_parameter_names(b.image_encoder, TrainableSpec.parse(kind)))
    res = train(b, _tensors(), _tensors(seed=1), protos, _cfg(trainable=kind, epochs=1), tmp_path / "run")
    moved = {k for k, v in res.encoder.state_dict().items() if not torch.equal(v, base[k])}
    assert moved and moved <= want
    expected = {
        "last-blocks:1": lambda n: (
            n.startswith("transformer.resblocks.1.") or n in ("ln_post.weight", "ln_post.bias", "proj")
        ),
        "layernorm": lambda n: ".ln_" in f".{n}" or n.startswith("ln_"),
        "bias": lambda n: n.endswith("bias"),
        "projection": lambda n: n == "proj",
    }[kind]
    assert want == {n for n in base if expected(n)}


# ---------------------------------------------------------------------------------------------- merge, WiSE-FT


@pytest.mark.parametrize("which", ["openclip", "hf"])
def test_merge_gives_a_plain_module_with_the_adapted_output(which, tiny_openclip, tiny_hf):
    b = _openclip(tiny_openclip) if which == "openclip" else _hf(tiny_hf)
    keys = set(b.image_encoder.state_dict())
    enc = apply_trainable(b.image_encoder, _lora(lora_rank=2, lora_targets="attn,mlp"))
    _randomise_adapters(enc)
    enc.eval()
    x = torch.randn(3, 3, 32, 32)
    merged = merge_adapters(enc).eval()
    assert not has_adapters(merged) and set(merged.state_dict()) == keys
    torch.testing.assert_close(merged(x), enc(x), rtol=1e-5, atol=1e-5)
    assert has_adapters(enc)  # the copy was merged, not the original


@pytest.mark.parametrize("which", ["openclip", "hf"])
def test_wiseft_of_lora_is_the_scaled_update(which, tiny_openclip, tiny_hf):
    """scale_adapters(alpha) computes what interpolating the zero-shot and the merged weights computes."""
    b = _openclip(tiny_openclip) if which == "openclip" else _hf(tiny_hf)
    zs = copy.deepcopy(b.image_encoder).eval()
    enc = apply_trainable(b.image_encoder, _lora(lora_rank=2))
    _randomise_adapters(enc)
    merged = merge_adapters(enc).eval()
    enc.eval()
    x = torch.randn(3, 3, 32, 32)
    for alpha in (0.0, 0.3, 0.75, 1.0):
        scale_adapters(enc, alpha)
        mixed = interpolate_module(zs, merged, alpha).eval()
        torch.testing.assert_close(enc(x), mixed(x), rtol=1e-5, atol=1e-5)
        sd = interpolate_state_dicts(zs.state_dict(), merged.state_dict(), alpha)
        for k, v in merge_adapters(enc).state_dict().items():
            torch.testing.assert_close(v, sd[k], rtol=1e-5, atol=1e-6)
    scale_adapters(enc, 0.3)
    scale_adapters(enc, 1.0)  # absolute, not cumulative: back to the trained update
    torch.testing.assert_close(enc(x), merged(x), rtol=1e-5, atol=1e-5)


def test_wiseft_of_a_partial_run_keeps_frozen_parts_bitwise(tiny_openclip, protos, tmp_path):
    b = _openclip(tiny_openclip)
    zs = copy.deepcopy(b.image_encoder)
    res = train(b, _tensors(), _tensors(seed=1), protos, _cfg(trainable="last-blocks:1", epochs=1), tmp_path / "run")
    frozen = set(zs.state_dict()) - set(trainable_parameter_names(zs, TrainableSpec.parse("last-blocks:1")))
    for alpha in (0.25, 0.5, 0.75):
        sd = interpolate_state_dicts(zs.state_dict(), res.encoder.state_dict(), alpha)
        for k in frozen:
            assert torch.equal(sd[k], zs.state_dict()[k]), (alpha, k)
        moved = [k for k in sd if k not in frozen and not torch.equal(sd[k], zs.state_dict()[k])]
        assert moved


def test_frozen_view_refuses_a_plain_encoder(tiny_openclip):
    with pytest.raises(ValueError):
        frozen_view(_openclip(tiny_openclip).image_encoder)
