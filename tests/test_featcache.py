"""The frozen encoder's feature cache: a hit is what a fresh pass computes and skips the forward; the key
follows the weights, the images' bytes and the preprocessing; a corrupt entry is recomputed, never used;
concurrent writers leave one whole entry; it can be switched off; a fine-tuned encoder is never cached."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from fdalign.data.datasets import ImageDataset, LabeledSplit, Sample
from fdalign.eval import featcache


class Counting(nn.Module):
    """[B, 3, 8, 8] -> [B, 4], counting forward calls."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * 8 * 8, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1))


def make_split(root, n: int = 5, shift: int = 0) -> LabeledSplit:
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        p = root / f"im{i}.png"
        Image.new("RGB", (8, 8), ((40 * i + shift) % 256, 10 * i, 200)).save(p)
        samples.append(Sample(str(p), i % 2))
    return LabeledSplit(classnames=["a", "b"], samples=samples, root=str(root), name="test")


TF = transforms.Compose([transforms.Resize(8), transforms.ToTensor()])


def extract(enc, ds):
    return featcache.extract_features(enc, ds, batch_size=2, progress=False)


@pytest.fixture
def data(tmp_path):
    return ImageDataset(make_split(tmp_path / "imgs"), TF)


def test_a_hit_equals_a_fresh_pass_and_runs_no_forward(data, tmp_path):
    enc = featcache.frozen(Counting())
    with featcache.enabled(tmp_path / "c") as cache:
        f1, y1 = extract(enc, data)
        calls = enc.calls
        f2, y2 = extract(enc, data)
    assert calls == 3 and enc.calls == calls  # 5 images in batches of 2, then nothing
    fresh = torch.stack([Counting().fc(data[i][0].flatten()) for i in range(len(data))]).detach()
    assert torch.allclose(f2, fresh, atol=1e-6) and torch.equal(f1, f2)
    assert y2.tolist() == [0, 1, 0, 1, 0] and torch.equal(y1, y2)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.corrupt) == (1, 1, 0)
    assert cache.stats.seconds_saved > 0


def test_the_key_follows_weights_images_and_preprocessing(data, tmp_path):
    enc = featcache.frozen(Counting(0))
    base = featcache.cache_key(enc, data, "fp32", "cpu")[0]
    assert featcache.cache_key(featcache.frozen(Counting(1)), data, "fp32", "cpu")[0] != base
    other_tf = ImageDataset(
        data.split,
        transforms.Compose([transforms.Resize(8), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]),
    )
    assert featcache.cache_key(enc, other_tf, "fp32", "cpu")[0] != base
    assert featcache.cache_key(enc, data, "bf16", "cpu")[0] != base
    changed = ImageDataset(make_split(tmp_path / "other", shift=1), TF)  # same names and labels, other pixels
    assert featcache.cache_key(enc, changed, "fp32", "cpu")[0] != base
    relabelled = ImageDataset(
        LabeledSplit(
            ["a", "b"], [Sample(s.path, 1 - s.label) for s in data.split.samples], data.split.root, name="test"
        ),
        TF,
    )
    assert featcache.cache_key(enc, relabelled, "fp32", "cpu")[0] != base
    assert featcache.cache_key(featcache.frozen(Counting(0)), data, "fp32", "cpu")[0] == base


def test_a_transform_with_a_lambda_is_never_cached(data, tmp_path):
    """A lambda's repr says nothing of what it does: two different ones must not share an entry."""
    enc = featcache.frozen(Counting())
    twice = ImageDataset(data.split, transforms.Compose([transforms.Resize(8), transforms.ToTensor(), lambda x: 2 * x]))
    thrice = ImageDataset(
        data.split, transforms.Compose([transforms.Resize(8), transforms.ToTensor(), lambda x: 3 * x])
    )
    with featcache.enabled(tmp_path / "c") as cache:
        f2, _ = extract(enc, twice)
        f3, _ = extract(enc, thrice)
    assert torch.allclose(f3 - enc.fc.bias, 1.5 * (f2 - enc.fc.bias), atol=1e-5)  # each its own pass
    assert featcache.cache_key(enc, twice, "fp32", "cpu") is None and cache.stats.hits == 0
    assert featcache.cache_key(enc, data, "fp32", "cpu") is not None  # named steps (torchvision's, _to_rgb) are


def test_a_corrupt_entry_is_recomputed_never_used(data, tmp_path):
    enc = featcache.frozen(Counting())
    with featcache.enabled(tmp_path / "c") as cache:
        f1, _ = extract(enc, data)
        entry = cache.path(featcache.cache_key(enc, data, "fp32", "cpu")[0])
        raw = bytearray(entry.read_bytes())
        raw[-3] ^= 0xFF  # one byte of the stored features
        entry.write_bytes(bytes(raw))
        calls = enc.calls
        with pytest.warns(UserWarning, match="content hash"):
            f2, _ = extract(enc, data)
        assert enc.calls > calls and torch.equal(f1, f2)
        assert cache.stats.corrupt == 1
        f3, _ = extract(enc, data)  # rewritten whole
    assert torch.equal(f3, f1) and cache.stats.hits == 1


def test_concurrent_writers_leave_one_whole_entry(data, tmp_path):
    cache = featcache.FeatureCache(tmp_path / "c")
    feats, labels = torch.randn(5, 4), torch.arange(5)
    threads = [threading.Thread(target=cache.put, args=("ab" * 32, feats, labels, 1.0, {})) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = cache.get("ab" * 32)
    assert got is not None and torch.equal(got[0], feats) and torch.equal(got[1], labels)
    assert [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()] == ["ab" * 32 + ".safetensors"]


def test_off_means_off_and_a_trained_encoder_is_never_cached(data, tmp_path, monkeypatch):
    monkeypatch.setenv(featcache.ENV, str(tmp_path / "env"))
    enc = featcache.frozen(Counting())
    with featcache.enabled(None):  # --no-feature-cache beats the environment
        extract(enc, data)
        extract(enc, data)
    assert enc.calls == 6 and not (tmp_path / "env").exists()
    trained = Counting()  # not marked frozen
    with featcache.enabled(tmp_path / "c"):
        extract(trained, data)
        extract(trained, data)
    assert trained.calls == 6 and not (tmp_path / "c").exists()


def test_two_workers_asking_at_once_run_the_encoder_once(data, tmp_path, monkeypatch):
    """The first asker's encoder does not run until the second asker is at the entry's lock: the second
    arrives while the first computes, whatever the machine's load."""
    import filelock

    second_at_the_lock = threading.Event()
    real = filelock.FileLock
    asked = []

    def counting_lock(path, *a, **kw):
        lock = real(path, *a, **kw)
        acquire = lock.acquire

        def noted(*x, **y):
            asked.append(path)
            if len(asked) == 2:
                second_at_the_lock.set()
            return acquire(*x, **y)

        lock.acquire = noted
        return lock

    monkeypatch.setattr(filelock, "FileLock", counting_lock)

    computing = set()

    class WaitsForTheSecond(Counting):
        def forward(self, x):
            computing.add(threading.get_ident())
            if len(computing) == 2:  # no lock at all (the bug): both compute, and neither waits forever
                second_at_the_lock.set()
            assert second_at_the_lock.wait(600), "the second asker never reached the lock"
            return super().forward(x)

    enc = featcache.frozen(WaitsForTheSecond())
    got = []
    with featcache.enabled(tmp_path / "c") as cache:
        threads = [threading.Thread(target=lambda: got.append(extract(enc, data))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(got) == 2 and len(asked) == 2, asked
    assert enc.calls == 3  # one pass of 5 images in batches of 2
    assert torch.equal(got[0][0], got[1][0]) and (cache.stats.hits, cache.stats.misses) == (1, 1)
