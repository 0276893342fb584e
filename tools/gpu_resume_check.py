"""Device check (needs CUDA): the bf16 f0 cosine under CUDA autocast against fp32, and a CUDA
train -> kill -> resume round trip with the one-file checkpoint (f0 in bf16), which must be bitwise."""

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, "src")
sys.path.insert(0, "tests")
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), flush=True)
dev = torch.device("cuda")
from fdalign.losses import spurious_log_probs

g = torch.Generator().manual_seed(0)
feats = torch.randn(256, 512, generator=g)
protos = F.normalize(torch.randn(20, 512, generator=g), dim=-1)
protos = F.normalize(protos + 3 * F.normalize(torch.randn(1, 512, generator=g), dim=-1), dim=-1)
feats = (feats + 8 * protos.mean(0)).to(dev)
protos = protos.to(dev)
ref = F.log_softmax(100.0 * F.normalize(feats, dim=-1) @ protos.t(), dim=-1)
with torch.autocast("cuda", dtype=torch.bfloat16):
    new = spurious_log_probs(feats.bfloat16(), protos, 100.0)
    old = F.log_softmax((100.0 * F.normalize(feats.bfloat16(), dim=-1) @ protos.bfloat16().t()).float(), dim=-1)
for name, got in (("old path (bf16 cosine)", old), ("new path under autocast", new)):
    kl = (ref.exp() * (ref - got)).sum(-1).mean().item()
    print(f"{name}: dtype {got.dtype} KL {kl:.3g} max|dlogp| {(ref - got).abs().max().item():.3g}", flush=True)

import open_clip

from conftest import TINY_OPENCLIP_CFG

d = Path(tempfile.mkdtemp())
(d / "c.json").write_text(json.dumps(TINY_OPENCLIP_CFG))
torch.manual_seed(0)
torch.save({"state_dict": open_clip.CLIP(**TINY_OPENCLIP_CFG).state_dict()}, d / "m.pt")
from _synth import make_imagefolder
from fdalign.backends import load_clip
from fdalign.data import ImageDataset, fewshot_val, open_dataset, sample_kshot
from fdalign.prototypes import build_prototypes
from fdalign.spc import SPCConfig
from fdalign.train.checkpoint import load_checkpoint
from fdalign.train.config import TrainConfig
from fdalign.train.trainer import f0_dtype, train

CL = ["red apple", "green leaf", "blue sky"]
TP = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy.", "a blurry {}."]
root = make_imagefolder(d / "data", CL, n_train=4, n_test=1, n_val=4, size=32)
sp = open_dataset(root)
tr, va = sample_kshot(sp["train"], 4, 1), fewshot_val(sp, 4, 1)


def B():
    return load_clip(None, pretrained=str(d / "m.pt"), model_config=d / "c.json")


protos = build_prototypes(B(), CL, TP, spc=SPCConfig(keep=4, k=2), cache_dir=False)
cfg = dict(
    shots=4,
    epochs=3,
    batch_size=4,
    num_workers=2,
    device="cuda",
    progress=False,
    spc_keep=4,
    spc_k=2,
    tensorboard=False,
    lr=1e-3,
    beta=2.0,
    spc=True,
    head="trainable",
    optimizer="adamw",
    precision="bf16",
    f0_precision="auto",
    warmup_steps=2,
)
print("f0 dtype auto on cuda:", f0_dtype(TrainConfig(**cfg), dev), flush=True)


def ds(b):
    return ImageDataset(tr, b.preprocess_train(scale=(0.3, 1.0), hflip=True)), ImageDataset(va, b.preprocess_eval())


t = time.time()
b = B()
full = train(b, *ds(b), protos, TrainConfig(**cfg), d / "full")
print("full run", round(time.time() - t, 1), "s; val", full.val_top1, flush=True)


class Killed(Exception):
    pass


def kill(e, _):
    if e == 1:
        raise Killed


b = B()
try:
    train(b, *ds(b), protos, TrainConfig(**cfg), d / "res", on_epoch_end=kill)
except Killed:
    pass
b = B()
res = train(b, *ds(b), protos, TrainConfig(**cfg, resume=True), d / "res")
same = all(torch.equal(v, res.encoder.state_dict()[k]) for k, v in full.encoder.state_dict().items())
print("resume bitwise equal on cuda:", same, "val", res.val_top1 == full.val_top1, flush=True)
ca, cb = load_checkpoint(d / "full" / "checkpoint"), load_checkpoint(d / "res" / "checkpoint")
print("cuda rng in checkpoint:", sorted(k for k in ca.rng_tensors if "cuda" in k), flush=True)
print(
    "best.safetensors bytes equal:",
    (d / "full/model/best.safetensors").read_bytes() == (d / "res/model/best.safetensors").read_bytes(),
)
