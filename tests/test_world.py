"""The embedded world: deterministic rendering, captions that tell the truth, and the shipped model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fdalign.world import generator as G
from fdalign.world.dataset import OPENAI_MEAN, OPENAI_STD, WorldDataset, random_resized_crop_flip


def _style(name: str, n: int = 24, seed: int = 5) -> G.WorldBatch:
    return G.render(n, seed, styles=[name])


# --------------------------------------------------------------------------- determinism ----
def test_same_seed_same_batch_different_seed_different():
    a, b, c = G.render(30, 7), G.render(30, 7), G.render(30, 8)
    assert np.array_equal(a.images, b.images)
    assert a.captions == b.captions and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.captions != c.captions


def test_chunked_rendering_equals_serial():
    labels, styles = G.sample_items(25, 3)
    serial = G.render_items(labels, styles, 3)
    chunked = G.render_parallel(labels, styles, 3, workers=1, chunk=7)
    assert np.array_equal(serial.images, chunked.images)
    assert serial.captions == chunked.captions
    # Sample k depends only on (seed, k): a suffix rendered alone matches.
    tail = G.render_items(labels[10:], styles[10:], 3, start=10)
    assert np.array_equal(tail.images, serial.images[10:])


def test_shapes_and_dtypes():
    b = G.render(10, 0, image_size=48)
    assert b.images.shape == (10, 48, 48, 3) and b.images.dtype == np.uint8
    assert b.labels.min() >= 0 and b.labels.max() < len(G.CLASSES)
    assert len(b.captions) == 10 and b.areas.shape == (10,)


def test_unknown_class_is_a_user_error():
    from fdalign.errors import FDAlignError

    with pytest.raises(FDAlignError, match="unicorn"):
        G.render(2, 0, classes=["unicorn"])


# ------------------------------------------------------------------------------ captions ----
def test_templates_are_exactly_the_openai80_plus_rotated():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    openai80 = {t("{}") for t in OPENAI_IMAGENET_TEMPLATES}
    assert len(openai80) == 80
    ours = [t for s, ts in G.STYLE_TEMPLATES.items() if s != "rotated" for t in ts]
    assert sorted(ours) == sorted(openai80)  # each template used by exactly one style
    assert len(G.CLASSES) == 24 and len(set(G.CLASSES)) == 24


def test_caption_names_the_label_and_the_style():
    b = G.render(300, 11)
    colours = "|".join(G.COLOUR_NAMES)
    n_colour = 0
    for y, s, cap in zip(b.labels, b.styles, b.captions):
        fits = []
        for t in G.STYLE_TEMPLATES[G.STYLES[s]]:
            pat = "^" + re.escape(t).replace(r"\{\}", f"(?:({colours}) )?(.+)") + "$"
            m = re.match(pat, cap)
            if m:
                fits.append(m)
        assert fits, (cap, G.STYLES[s])
        assert any(m.group(2) == G.CLASSES[y] for m in fits), (cap, G.CLASSES[y])
        n_colour += any(m.group(1) for m in fits)
    assert 0.15 < n_colour / len(b) < 0.5  # colour words are mixed in, never for grey styles


def test_no_colour_word_where_colour_is_invisible():
    for style in ("black and white", "sketch", "dark", "sculpture", "tattoo"):
        b = _style(style, 40)
        for y, cap in zip(b.labels, b.captions):
            assert cap in {t.format(G.CLASSES[y]) for t in G.STYLE_TEMPLATES[style]}, cap


# -------------------------------------------------------------------------- style pixels ----
def _grad(images: np.ndarray) -> float:
    x = images.astype(np.float32)
    return float(np.abs(np.diff(x, axis=2)).mean())


def test_black_and_white_has_equal_channels():
    im = _style("black and white").images.astype(int)
    assert np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 1], im[..., 2])
    photo = _style("photo").images.astype(int)
    assert not np.array_equal(photo[..., 0], photo[..., 1])


def test_dark_is_dark_and_bright_is_bright():
    dark, bright, photo = (_style(s).images.mean() for s in ("dark", "bright", "photo"))
    assert dark < 50 < photo < 200 < bright


def test_sketch_is_mostly_white_paper():
    im = _style("sketch").images
    white = (im.min(axis=-1) > 200).mean(axis=(1, 2))
    assert white.min() > 0.5
    assert (_style("photo").images.min(axis=-1) > 200).mean() < 0.2


def test_small_few_pixels_close_up_many():
    filled = ["circle", "square", "heart"]  # digits and thin shapes cover less at any size
    small, photo, close = (G.render(24, 5, classes=filled, styles=[s]).areas for s in ("small", "photo", "close-up"))
    assert small.max() < 0.08 < photo.min() and photo.max() < 0.5 < close.min()


def test_many_shows_several_objects():
    kw = dict(classes=["circle", "square", "diamond"])
    many, small = G.render(12, 2, styles=["many"], **kw), G.render(12, 2, styles=["small"], **kw)
    assert many.areas.mean() > 2.5 * small.areas.mean()


def test_pixelated_is_blocky_and_blurry_is_smooth():
    pix = _style("pixelated").images
    same = (pix[:, :, 1:] == pix[:, :, :-1]).all(-1).mean()
    photo = _style("photo").images
    assert same > 0.7 > 0.2 > (photo[:, :, 1:] == photo[:, :, :-1]).all(-1).mean()
    assert _grad(_style("blurry").images) < 0.5 * _grad(photo)


def test_cropped_object_is_cut_by_the_frame():
    for k in range(30):
        ((cx, cy, r, _),) = G._geometry(np.random.default_rng([5, k]), "cropped", 64)
        assert min(cx - r, cy - r) < 0 or max(cx + r, cy + r) > 64
        ((cx, cy, r, _),) = G._geometry(np.random.default_rng([5, k]), "photo", 64)
        assert min(cx - r, cy - r) >= 0 and max(cx + r, cy + r) <= 64


# ------------------------------------------------------------------------------- dataset ----
def test_dataset_normalises_like_hand_computation():
    b = G.render(4, 1)
    ds = WorldDataset(b)
    x, y = ds[2]
    assert x.shape == (3, 64, 64) and y == int(b.labels[2])
    px = b.images[2, 10, 20].astype(np.float64) / 255.0
    expect = (px - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    np.testing.assert_allclose(x[:, 10, 20].numpy(), expect, atol=1e-5)


def test_augmentation_keeps_shape_and_full_crop_is_identity():
    x = torch.rand(3, 16, 16)
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_flip(x, g, scale=(1.0, 1.0), hflip=False)
    torch.testing.assert_close(out, x)
    aug = WorldDataset(G.render(2, 1), augment=True)
    assert aug[0][0].shape == (3, 64, 64)


# ------------------------------------------------------------------------- shipped model ----
def test_shipped_model_zero_shot_is_far_above_chance():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from fdalign.backends import load_clip
    from fdalign.world.dataset import to_tensor

    torch.set_num_threads(2)
    backend = load_clip("fdalign-world")  # the packaged assets, through the public loader
    image_encoder, encode_text, spec = backend.image_encoder.eval(), backend.encode_text, backend.image_spec
    assert spec.size == 64
    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    text = encode_text([t.format(c) for c in G.CLASSES for t in templates])
    text = torch.nn.functional.normalize(text, dim=-1).view(len(G.CLASSES), len(templates), -1).mean(1)
    test = G.render_grid(3, 4242, styles=["photo"])  # 72 images, seeds unseen in training
    with torch.no_grad():
        f = image_encoder(to_tensor(test.images, spec.mean, spec.std))
    acc = (f @ text.t()).argmax(1).numpy() == test.labels
    assert acc.mean() > 3 / len(G.CLASSES)
