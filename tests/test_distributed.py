"""Data-parallel training (gloo, 2 CPU processes) equals one process at the same global batch, and a
checkpoint written by 2 processes resumes in 1."""

import csv

import pytest
import torch
import torch.multiprocessing as mp

from _ddp_worker import run_training, worker
from fdalign.train.distributed import GlobalBatchSampler

CFG = dict(
    shots=4,
    epochs=2,
    batch_size=5,
    num_workers=0,
    device="cpu",
    progress=False,
    tensorboard=False,
    optimizer="sgd",
    lr=0.05,
    beta=2.0,
    head="trainable",
    spc_keep=4,
    spc_k=2,
    selection="last",
    wd_skip_norm_bias=False,
)


def test_global_batch_sampler_shares_and_weights():
    order = list(range(7))
    shares = [GlobalBatchSampler(order, 4, r, 3) for r in range(3)]
    # global batches [0..3] and [4..6]; 3 ranks take ceil(4/3)=2, 2, 0 and 1, 1, 1 of them
    assert [s.batches for s in shares] == [[[0, 1], [4]], [[2, 3], [5]], [[0], [6]]]
    assert [s.weights for s in shares] == [[1.5, 1.0], [1.5, 1.0], [0.0, 1.0]]
    for b in range(2):  # the weights average to 1: mean_r(w_r * mean_r) is the global mean
        assert sum(s.weights[b] for s in shares) / 3 == pytest.approx(1.0)


def _spawn(tiny, tmp_path, name, kill_after=None):
    out = str(tmp_path / name)
    mp.spawn(
        worker,
        args=(2, str(tmp_path / f"{name}.init"), tiny, str(tmp_path / name), CFG, out, kill_after),
        nprocs=2,
        join=True,
    )
    return out


def _assert_close(a: dict, b: dict):
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_two_processes_equal_one_and_resume_in_one(tiny_openclip, tmp_path):
    torch.set_num_threads(1)
    single = run_training(tiny_openclip, tmp_path / "single", CFG).encoder.state_dict()
    pretrained = run_training(tiny_openclip, tmp_path / "p", dict(CFG, epochs=1, lr=0.0)).encoder.state_dict()
    assert max((single[k] - pretrained[k]).abs().max() for k in single) > 1e-3  # training moved the weights

    out = _spawn(tiny_openclip, tmp_path, "ddp")
    r0, r1 = torch.load(f"{out}.rank0.pt", weights_only=True), torch.load(f"{out}.rank1.pt", weights_only=True)
    _assert_close(r0, single)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # the ranks never drift apart
    with open(tmp_path / "ddp" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))  # 15 images / 5 per step x 2 epochs, logged once
    with open(tmp_path / "single" / "log.csv") as f:
        for a, b in zip(rows, csv.DictReader(f)):  # gathered losses = the single process's global-batch losses
            assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4, abs=1e-6)

    # killed after epoch 1 in two processes, resumed in one: the uninterrupted single-process weights
    _spawn(tiny_openclip, tmp_path, "killed", kill_after=1)
    resumed = run_training(tiny_openclip, tmp_path / "killed", dict(CFG, resume=True)).encoder.state_dict()
    _assert_close(resumed, single)
