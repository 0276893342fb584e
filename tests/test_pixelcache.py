"""Evaluation at scale: one decoding pass per set for every encoder, and the pixel cache (uint8 after resize and
centre crop) shared by a sweep's runs. Decodes are counted by a counting step in the transform; metrics are
compared bitwise with the plain path; the key follows images, labels and preprocessing; a damaged entry is
recomputed and said; the budget evicts the least recently used entries."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from fdalign.backends.image import ImageSpec, eval_transform
from fdalign.data.datasets import ImageDataset, LabeledSplit, Sample
from fdalign.eval import EvalSet, featcache, pixelcache, run_evaluation
from fdalign.eval.pipeline import encode_once

SIZE = 8
DECODES: list[int] = []  # one entry per image through the transform


class CountDecodes:
    """A transform step counting the images it sees (a module-level class: its repr keys the caches)."""

    def __call__(self, img):
        DECODES.append(1)
        return img

    def __repr__(self) -> str:
        return "CountDecodes()"


class Enc(nn.Module):
    """[B, 3, 8, 8] -> [B, 5], counting images."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * SIZE * SIZE, 5)
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.fc(x.flatten(1))


def tf(crop: int = SIZE, resize: int = 10):
    spec = ImageSpec(size=crop, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28), resize=resize)
    base = eval_transform(spec)
    return T.Compose([CountDecodes(), *base.transforms])


def make_split(root, n: int = 7, seed: int = 0, name: str = "test") -> LabeledSplit:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        p = root / f"im{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (13 + i, 11, 3), dtype=np.uint8)).save(p, quality=90)
        samples.append(Sample(str(p), i % 3))
    return LabeledSplit(classnames=["a", "b", "c"], samples=samples, root=str(root), name=name)


def models(seed: int = 0) -> dict:
    """A run's rows: zero-shot (frozen, cacheable), fine-tuned and two mixes, each with its own encoder."""
    zs = featcache.frozen(Enc(100))  # the same pretrained weights in every run
    heads = nn.Linear(5, 3)
    return {
        "zero-shot": (zs, heads),
        "fine-tuned": (Enc(seed + 1), heads),
        "wiseft-0.25": (Enc(seed + 2), heads),
        "wiseft-0.5": (Enc(seed + 3), heads),
    }


@pytest.fixture
def sets(tmp_path):
    return {
        "test": EvalSet("test", ImageDataset(make_split(tmp_path / "test"), tf())),
        "shift": EvalSet(
            "shift", ImageDataset(make_split(tmp_path / "shift", 5, seed=1, name="shift"), tf()), role="ood"
        ),
    }


def evaluate(rows, sets, **kw):
    DECODES.clear()
    res = run_evaluation(rows, sets, batch_size=3, progress=False, num_workers=0, **kw)
    return res, len(DECODES)


def test_normalising_the_cached_pixels_is_bitwise_todays_transform(tmp_path):
    """ToTensor + Normalize on each PIL image == uint8 batch -> normalise, for CLIP's eval transform."""
    split = make_split(tmp_path / "imgs", 6)
    spec = ImageSpec(size=7, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    full = eval_transform(spec)
    parts = pixelcache.split_transform(full)
    ds = ImageDataset(split, full)
    today = torch.stack([ds[i][0] for i in range(len(ds))])
    pixels = torch.stack([pixelcache.PixelDataset(ds, parts)[i][0] for i in range(len(ds))])
    assert pixels.dtype == torch.uint8 and pixels.shape == (6, 3, 7, 7)
    assert pixelcache.fast_jpeg_is_exact()  # so these JPEGs went through simplejpeg, and still match PIL
    assert torch.equal(pixelcache.normalise(pixels, parts), today)
    # the key holds the PIL part only: resize, crop, interpolation; not the normalisation
    assert "CenterCrop" in parts.description and "Normalize" not in parts.description
    assert pixelcache.split_transform(T.Compose([T.ToTensor(), lambda x: x])) is None


def test_one_pass_per_set_instead_of_one_per_encoder(sets):
    rows = models()
    with featcache.enabled(None), pixelcache.enabled(None):
        _, decodes = evaluate(rows, sets)
        # the path before: one pass per distinct encoder
        DECODES.clear()
        for es in sets.values():
            for enc, _ in rows.values():
                featcache.extract_features(enc, es.dataset, batch_size=3, progress=False)
        before = len(DECODES)
    assert decodes == 7 + 5  # each image of each set once
    assert before == 4 * (7 + 5)
    assert all(enc.images == 2 * (7 + 5) for enc, _ in rows.values())  # each encoder saw each image (twice)


def test_a_run_whose_sweep_cached_the_sets_decodes_nothing(sets, tmp_path):
    with featcache.enabled(tmp_path / "features"), pixelcache.enabled(tmp_path / "pixels") as cache:
        first, d1 = evaluate(models(0), sets)  # the sweep's first run fills both caches
        second_rows = models(10)  # another run: new fine-tuned encoder and mixes, the same zero-shot
        second, d2 = evaluate(second_rows, sets)
    assert (d1, d2) == (12, 0)
    assert second_rows["zero-shot"][0].images == 0  # zero-shot from the feature cache
    assert second_rows["fine-tuned"][0].images == 12  # the others from the pixel cache
    assert (cache.stats.misses, cache.stats.hits) == (2, 2)
    assert cache.stats.bytes_read == cache.stats.bytes_written - 2 * 128 == 12 * 3 * SIZE * SIZE  # .npy headers
    assert cache.stats.decoded == {"test": 7, "shift": 5}
    assert first["test"]["zero-shot"] == second["test"]["zero-shot"]


def test_metrics_and_features_are_bitwise_equal_with_and_without_the_pixel_cache(sets, tmp_path):
    rows = models()
    with featcache.enabled(None):
        with pixelcache.enabled(None):
            plain, _ = evaluate(rows, sets)
            feats_plain, _ = encode_once(
                [e for e, _ in rows.values()], sets["test"].dataset, 3, num_workers=0, progress=False
            )
        with pixelcache.enabled(tmp_path / "pixels"):
            cold, _ = evaluate(rows, sets)
            warm, decodes = evaluate(rows, sets)
            feats_warm, _ = encode_once(
                [e for e, _ in rows.values()], sets["test"].dataset, 3, num_workers=0, progress=False
            )
    assert decodes == 0 and plain == cold == warm
    # the reference: today's transform image by image, through the encoder in one batch
    ds = sets["test"].dataset
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    for (enc, _), fp, fw in zip(rows.values(), feats_plain, feats_warm):
        assert torch.equal(fp, fw)
        assert torch.allclose(fw, enc.fc(x.flatten(1)).detach(), atol=1e-6)


def test_a_damaged_entry_is_recomputed_and_said(sets, tmp_path):
    rows = models()
    with featcache.enabled(None), pixelcache.enabled(tmp_path / "pixels") as cache:
        before, _ = evaluate(rows, sets)
        key = pixelcache.cache_key(sets["test"].dataset, pixelcache.split_transform(sets["test"].dataset.transform))[0]
        entry = cache.path(key)
        raw = bytearray(entry.read_bytes())
        raw[-5] ^= 0xFF  # one pixel
        entry.write_bytes(bytes(raw))
        with pytest.warns(UserWarning, match="damaged.*sha256.*recomputing"):
            again, decodes = evaluate(rows, sets)
        assert decodes == 7 and again == before and cache.stats.corrupt == 1
        cache.path(key, ".json").write_text("{not json", encoding="utf-8")
        with pytest.warns(UserWarning, match="damaged"):
            _, decodes = evaluate(rows, sets)
        assert decodes == 7 and cache.stats.corrupt == 2
        _, decodes = evaluate(rows, sets)  # rewritten whole
    assert decodes == 0


def test_the_key_follows_images_labels_and_preprocessing(tmp_path):
    split = make_split(tmp_path / "imgs")

    def key(split=split, t=None):
        ds = ImageDataset(split, t or tf())
        return pixelcache.cache_key(ds, pixelcache.split_transform(ds.transform))[0]

    base = key()
    assert key(t=tf(crop=6)) != base  # the crop size
    assert key(t=tf(resize=12)) != base  # the resize
    relabelled = LabeledSplit(
        split.classnames, [Sample(s.path, (s.label + 1) % 3) for s in split.samples], split.root, name="test"
    )
    assert key(relabelled) != base
    other_norm = T.Compose([*tf().transforms[:-1], T.Normalize([0.5] * 3, [0.5] * 3)])
    assert key(t=other_norm) == base  # normalisation runs on the tensor: the pixels are shared


def test_a_changed_image_is_not_served_from_a_stale_entry(sets, tmp_path):
    rows = models()
    ds = sets["test"].dataset
    with featcache.enabled(None), pixelcache.enabled(tmp_path / "pixels"):
        evaluate(rows, sets)
        path = ds.split.resolve(ds.split.samples[2])
        Image.new("RGB", (40, 40), (255, 0, 0)).save(path)  # same name, other pixels
        feats, _ = encode_once([rows["fine-tuned"][0]], ds, 3, num_workers=0, progress=False)
    x = ds[2][0]  # today's transform of the new image
    assert torch.allclose(feats[0][2], rows["fine-tuned"][0].fc(x.flatten()).detach(), atol=1e-6)


def test_the_budget_evicts_the_least_recently_used(tmp_path):
    sets3 = [ImageDataset(make_split(tmp_path / f"s{i}", 4, seed=i, name=f"s{i}"), tf()) for i in range(3)]
    entry = 4 * 3 * SIZE * SIZE + 128  # .npy header
    cache = pixelcache.PixelCache(tmp_path / "pixels", budget=2 * entry + 2 * 600)  # two entries and their JSON
    with featcache.enabled(None), pixelcache.enabled(None):
        pixelcache._active[-1] = cache  # this cache object, budget included
        keys = []
        for i, ds in enumerate(sets3[:2]):
            encode_once([Enc(0)], ds, 2, num_workers=0, progress=False)
            keys.append(pixelcache.cache_key(ds, pixelcache.split_transform(ds.transform))[0])
            os.utime(cache.path(keys[-1], ".json"), (1000 + i, 1000 + i))  # s0 used before s1
        cache.get(keys[0])  # s0 used again: now s1 is the least recently used
        os.utime(cache.path(keys[0], ".json"), (2000, 2000))
        encode_once([Enc(0)], sets3[2], 2, num_workers=0, progress=False)
    left = {p.stem for p in (tmp_path / "pixels").glob("*/*.json")}
    assert keys[0] in left and keys[1] not in left and len(left) == 2
    assert cache.stats.evicted == 1 and not cache.path(keys[1]).exists()


def test_off_means_off(sets, tmp_path, monkeypatch):
    monkeypatch.setenv(pixelcache.ENV, str(tmp_path / "env"))
    with featcache.enabled(None), pixelcache.enabled(None):  # --no-pixel-cache beats the environment
        evaluate(models(), sets)
        _, decodes = evaluate(models(), sets)
    assert decodes == 12 and not (tmp_path / "env").exists()


def test_two_askers_at_once_decode_once(sets, tmp_path):
    gate = threading.Barrier(2)
    got, encoder = [], Enc(0)

    def ask():
        gate.wait()
        got.append(encode_once([encoder], sets["test"].dataset, 3, num_workers=0, progress=False)[0][0])

    with featcache.enabled(None), pixelcache.enabled(tmp_path / "pixels") as cache:
        DECODES.clear()
        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(DECODES) == 7 and torch.equal(got[0], got[1])
    assert (cache.stats.misses, cache.stats.hits) == (1, 1)


def test_jpeg_decoding_falls_back_to_pil_for_what_simplejpeg_does_not_do_exactly(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (9, 9), (10, 200, 30, 5)).save(cmyk)
    png = tmp_path / "a.png"
    Image.new("RGB", (9, 9), (1, 2, 3)).save(png)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    assert pixelcache._fast_jpeg(cmyk) is None and pixelcache._fast_jpeg(png) is None
    assert pixelcache._fast_jpeg(broken) is None  # the PIL path then raises its one-line error
    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 40), (9, 99, 199)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:-40])
    assert pixelcache._fast_jpeg(good) is not None and pixelcache._fast_jpeg(truncated) is None
    split = LabeledSplit(["a"], [Sample(str(broken), 0)], str(tmp_path), name="test")
    parts = pixelcache.split_transform(tf())
    with pytest.raises(Exception, match="broken.jpg.*cannot be read"):
        pixelcache.PixelDataset(ImageDataset(split, tf()), parts)[0]


# ----------------------------------------------------------------------------------------------
# --jpeg-draft: an opt-in DCT-downscaled decode, keyed apart from the exact pixels


def _photos(root, size: int = 64, n: int = 4) -> LabeledSplit:
    """Smooth JPEGs of ``size`` px (and one PNG, which draft mode leaves alone)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    samples = []
    for i in range(n):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        p = root / (f"p{i}.png" if i == n - 1 else f"p{i}.jpg")
        img.save(p, quality=92) if p.suffix == ".jpg" else img.save(p)
        samples.append(Sample(str(p), i % 3))
    return LabeledSplit(["a", "b", "c"], samples, str(root), name="test")


def test_jpeg_draft_decodes_at_the_smallest_dct_scale_that_keeps_the_resize_size(tmp_path):
    from fdalign.data.datasets import draft_size

    split = _photos(tmp_path / "p")
    assert draft_size(tf(resize=10)) == 10
    exact, d10, d20 = (ImageDataset(split, None, draft)[0][0] for draft in (None, 10, 20))
    # 64 px: 1/4 keeps 16 >= 10 (1/8 would give 8); for 20, 1/2 (32) is the smallest that keeps 20
    assert (exact.size, d10.size, d20.size) == ((64, 64), (16, 16), (32, 32))
    assert ImageDataset(split, None, 10)[3][0].size == (64, 64)  # the PNG: decoded in full
    # downscaled in the DCT, the image is close to, not equal to, the exact decode resized alike
    ref = np.asarray(exact.resize((16, 16), Image.BILINEAR), dtype=float)
    diff = np.abs(np.asarray(d10, dtype=float) - ref)
    assert 0 < diff.mean() < 12


def test_jpeg_draft_is_keyed_apart_and_the_exact_key_is_unchanged(tmp_path):
    split = _photos(tmp_path / "p")
    exact, draft = ImageDataset(split, tf()), ImageDataset(split, tf(), draft=10)
    assert "jpeg_draft" not in featcache.dataset_key(exact)  # caches written before the option stay valid
    assert featcache.dataset_key(draft) == {**featcache.dataset_key(exact), "jpeg_draft": 10}
    parts = pixelcache.split_transform(tf())
    assert pixelcache.cache_key(exact, parts)[0] != pixelcache.cache_key(draft, parts)[0]
    # the pixel pass decodes in draft mode (not through the exact simplejpeg path)
    got = pixelcache.PixelDataset(draft, parts)[0][0]
    want = pixelcache.to_uint8(parts.pil(ImageDataset(split, None, 10)[0][0]))
    assert torch.equal(got, want)
    assert not torch.equal(got, pixelcache.PixelDataset(exact, parts)[0][0])
