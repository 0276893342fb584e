"""Accuracy, subset restriction, shared-feature evaluation and reports (fdalign.eval)."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fdalign.eval import (
    EvalSet,
    extract_features,
    mean_std,
    remap_labels,
    restrict_logits,
    run_evaluation,
    subset_accuracy,
    topk_accuracy,
    write_metrics,
    write_report,
)

# ------------------------------------------------------------------------------------------------
# topk_accuracy


def test_topk_hand_example():
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0],  # label 0: rank 0
            [0.5, 0.4, 0.3, 0.2],  # label 2: rank 2
            [0.1, 0.2, 0.3, 0.4],  # label 0: rank 3
            [0.0, 0.6, 0.5, 0.1],  # label 2: rank 1
        ]
    )
    labels = torch.tensor([0, 2, 0, 2])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 3, 4))
    # by hand: ranks 0,2,3,1 -> top1 1/4, top2 2/4, top3 3/4, top4 4/4
    assert acc == pytest.approx({1: 25.0, 2: 50.0, 3: 75.0, 4: 100.0})


def test_topk_k_larger_than_classes_is_clipped():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0])  # ranks 2 and 0
    acc = topk_accuracy(logits, labels, ks=(1, 5))
    assert set(acc) == {1, 5}  # keyed by the requested k
    assert acc[1] == pytest.approx(50.0)
    assert acc[5] == pytest.approx(100.0)  # top-5 of 3 classes = top-3


def test_topk_ties_go_to_lower_index_like_argmax():
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    labels = torch.tensor([0, 1, 2])
    # row 0: tied with class 1, true class has the lower index -> rank 0 (argmax picks it)
    # row 1: tied with class 0 (lower index) -> rank 1
    # row 2: tied with class 1 (lower index) -> rank 1
    acc = topk_accuracy(logits, labels, ks=(1, 2))
    assert acc[1] == pytest.approx(100 / 3)
    assert acc[2] == pytest.approx(100.0)
    assert (logits.argmax(1) == labels).float().mean().item() * 100 == pytest.approx(acc[1])


def test_topk_matches_numpy_argsort_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 17, generator=g)
    labels = torch.randint(0, 17, (300,), generator=g)
    acc = topk_accuracy(logits, labels, ks=(1, 3, 5))
    order = np.argsort(-logits.numpy(), axis=1, kind="stable")
    for k in (1, 3, 5):
        ref = np.mean([labels[i].item() in order[i, :k] for i in range(300)]) * 100
        assert acc[k] == pytest.approx(ref)


def test_topk_rejects_bad_shapes_and_labels():
    with pytest.raises(ValueError):
        topk_accuracy(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        topk_accuracy(torch.zeros(2, 2), torch.tensor([0, 2]))
    assert math.isnan(topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))[1])


# ------------------------------------------------------------------------------------------------
# evaluating on a subset of the classes


def test_restricted_logits_exclude_competitor_outside_subset():
    # 4 ID classes; the OOD set only has classes 1 and 3. Sample 0 (class 3) loses to class 0,
    # which is absent from the set, so it is wrong on all 4 classes but right on the subset.
    logits = torch.tensor([[5.0, 1.0, 0.0, 4.0], [0.0, 3.0, 9.0, 1.0]])
    labels = torch.tensor([3, 1])  # ID labels
    subset = [1, 3]
    assert topk_accuracy(logits, labels, ks=(1,))[1] == pytest.approx(0.0)
    r = restrict_logits(logits, subset)
    assert torch.equal(r, torch.tensor([[1.0, 4.0], [3.0, 1.0]]))
    assert torch.equal(remap_labels(labels, subset), torch.tensor([1, 0]))
    assert subset_accuracy(logits, labels, subset, ks=(1,))[1] == pytest.approx(100.0)
    assert restrict_logits(logits, None) is logits


def test_remap_labels_rejects_label_outside_subset():
    with pytest.raises(ValueError, match="not in the class subset"):
        remap_labels(torch.tensor([0, 2]), [0, 1])


def test_mean_std_uses_sample_std():
    vals = [61.0, 63.5, 62.0, 64.25]
    m, s = mean_std(vals)
    assert m == pytest.approx(statistics.mean(vals))
    assert s == pytest.approx(statistics.stdev(vals))
    assert mean_std([5.0]) == (5.0, 0.0)


# ------------------------------------------------------------------------------------------------
# features and the shared-feature pipeline


class CountingEncoder(nn.Module):
    """Linear image encoder that counts forward calls and images; behaves differently in train mode."""

    def __init__(self, d_in: int, d_out: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(d_in, d_out)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(d_out, d_in, generator=g))
            self.proj.bias.copy_(torch.randn(d_out, generator=g))
        self.drop = nn.Dropout(0.9)
        self.calls = 0
        self.images = 0

    def forward(self, x):
        self.calls += 1
        self.images += x.shape[0]
        return self.proj(self.drop(x.flatten(1)))


def _set(n: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 2, 2, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y), x, y


def test_extract_features_eval_mode_restores_train_mode():
    enc = CountingEncoder(12, 5, seed=1)
    ds, x, y = _set(10, 3, seed=2)
    enc.train()
    f, lab = extract_features(enc, ds, batch_size=4, progress=False)
    assert enc.training  # mode restored
    assert f.dtype == torch.float32 and lab.dtype == torch.int64 and f.device.type == "cpu"
    assert enc.calls == 3  # ceil(10 / 4)
    enc.eval()
    with torch.no_grad():
        ref = enc.proj(x.flatten(1))  # no dropout: features came from eval mode
    assert torch.allclose(f, ref, atol=1e-6)
    assert torch.equal(lab, y)
    assert not f.requires_grad


def test_run_evaluation_encodes_each_set_once_per_encoder():
    d, c = 6, 4
    enc_a, enc_b = CountingEncoder(12, d, seed=3), CountingEncoder(12, d, seed=4)
    head_1 = nn.Linear(d, c)
    head_2 = nn.Linear(d, c)
    torch.manual_seed(5)
    nn.init.normal_(head_1.weight), nn.init.normal_(head_2.weight)
    models = {"zs": (enc_a, head_1), "probe": (enc_a, head_2), "ft": (enc_b, head_1)}
    id_ds, id_x, id_y = _set(23, c, seed=6)
    ood_ds, ood_x, ood_y = _set(11, c, seed=7)
    ood_y_sub = ood_y.clone()
    subset = sorted(set(ood_y_sub.tolist()))
    sets = {"test": EvalSet("test", id_ds), "shift": EvalSet("shift", ood_ds, class_subset=subset, role="ood")}

    res = run_evaluation(models, sets, batch_size=8, progress=False)

    # each set passed once through each distinct encoder: 23 + 11 images, ceil(23/8)+ceil(11/8) calls
    assert (enc_a.images, enc_a.calls) == (34, 5)
    assert (enc_b.images, enc_b.calls) == (34, 5)
    assert list(res) == ["test", "shift"]
    assert list(res["test"]) == ["zs", "probe", "ft"]

    # direct computation with an independent top-k (numpy argsort)
    def direct(enc, head, x, y, subset=None):
        enc.eval()
        with torch.no_grad():
            logits = head(enc.proj(x.flatten(1))).numpy()
        yy = y.numpy()
        if subset is not None:
            logits = logits[:, subset]
            yy = np.array([subset.index(v) for v in yy])
        order = np.argsort(-logits, axis=1, kind="stable")
        top = lambda k: 100 * np.mean([yy[i] in order[i, :k] for i in range(len(yy))])  # noqa: E731
        return top(1), top(5)

    for name, (enc, head) in models.items():
        t1, t5 = direct(enc, head, id_x, id_y)
        assert res["test"][name] == {"top1": pytest.approx(t1), "top5": pytest.approx(t5), "n": 23}
        t1, t5 = direct(enc, head, ood_x, ood_y, subset)
        assert res["shift"][name]["top1"] == pytest.approx(t1)
        assert res["shift"][name]["n"] == 11


# ------------------------------------------------------------------------------------------------
# metrics.json and report.md


def _metrics():
    return {
        "test": {
            "zero-shot": {"top1": 60.0, "top5": 85.0, "n": 100},
            "fdalign": {"top1": 70.0, "top5": 90.0, "n": 100},
        },
        "sketch": {
            "zero-shot": {"top1": 40.0, "top5": 60.0, "n": 50},
            "fdalign": {"top1": 42.0, "top5": 61.0, "n": 50},
        },
        "adv": {"zero-shot": {"top1": 30.0, "top5": 50.0, "n": 20}, "fdalign": {"top1": 35.0, "top5": 55.0, "n": 20}},
    }


def test_write_metrics_and_report(tmp_path):
    roles = {"test": "test", "sketch": "ood", "adv": "ood"}
    m = _metrics()
    write_metrics(tmp_path, m, {"roles": roles, "hashes": {"test": "list:abc"}})
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["metrics"] == m
    assert doc["ood_average"]["fdalign"]["top1"] == pytest.approx((42.0 + 35.0) / 2)
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind

    write_report(
        tmp_path,
        m,
        roles=roles,
        selection={"epoch": "best val top-1 (epoch 3 of 5)", "val set": "4 per class"},
        config={"model": "ViT-B-32"},
        hashes={"test": "list:abc", "sketch": "list:def"},
    )
    text = (tmp_path / "report.md").read_text()
    assert "| model | test top-1 | test top-5 | sketch top-1 | adv top-1 | OOD avg top-1 |" in text
    assert "| zero-shot | 60.00 | 85.00 | 40.00 | 30.00 | 35.00 |" in text
    assert "| fdalign | 70.00 | 90.00 | 42.00 | 35.00 | 38.50 |" in text
    assert "What was selected on what" in text and "epoch 3 of 5" in text
    assert "`list:def`" in text


def test_report_without_roles_treats_first_set_as_id(tmp_path):
    m = {"test": _metrics()["test"]}
    write_report(tmp_path, m, selection=None, config=None, hashes=None)
    text = (tmp_path / "report.md").read_text()
    assert "| model | test top-1 | test top-5 |" in text
    assert "OOD avg" not in text
