"""Miniature copies of the official archives, in their real formats (names, tar / zip, .mat / CSV / TXT).

Each builder writes the files a user downloads, with a few images per class, and returns the
``--from`` paths plus the counts the miniature holds (for ``--expect-counts``).
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import zipfile
from pathlib import Path

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark


_SERIAL = itertools.count()


def jpeg(i: int = 0) -> bytes:
    """A small JPEG unlike every other one made here (the selection guard compares image contents)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([i, next(_SERIAL)])
    im = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="JPEG")
    return buf.getvalue()


def write_tar(path: Path, files: dict[str, bytes], gz: bool | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    gz = path.name.endswith((".gz", ".tgz")) if gz is None else gz
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def expect(path: Path, counts: dict[str, tuple[int, int]]) -> Path:
    path.write_text(json.dumps({k: list(v) for k, v in counts.items()}))
    return path


# ----------------------------------------------------------------------------------------------
# ImageNet


def devkit(path: Path, val_wnids: list[str]) -> Path:
    """ILSVRC2012_devkit_t12.tar.gz: data/meta.mat (synsets) and the val ground truth (1-based ids)."""
    import numpy as np
    import scipy.io

    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
              ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    syn = np.zeros((len(WNIDS) + 1, 1), dtype=fields)
    for i, w in enumerate(WNIDS):
        syn[i, 0] = (i + 1, w, f"class {w}", "gloss", 0, np.zeros((0,)), 0, 4)
    syn[len(WNIDS), 0] = (len(WNIDS) + 1, "n00000000", "fish", "a parent synset", 3, np.zeros((0,)), 1, 0)
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": syn})
    gt = "".join(f"{WNIDS.index(w) + 1}\n" for w in val_wnids)
    return write_tar(path, {"ILSVRC2012_devkit_t12/data/meta.mat": mat.getvalue(),
                            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": gt.encode()})


def imagenet(root: Path, per_class: int = 4, val_per_class: int = 2, labels: str = "devkit") -> dict:
    """ILSVRC2012_img_train.tar (a tar of per-class tars), a flat ILSVRC2012_img_val.tar and the devkit
    (or LOC_val_solution.csv)."""
    inner = {f"{w}.tar": tar_bytes({f"{w}_{100 + i}.JPEG": jpeg(c * 10 + i) for i in range(per_class)})
             for c, w in enumerate(WNIDS)}
    train = write_tar(root / "ILSVRC2012_img_train.tar", inner)
    val_wnids = [WNIDS[i % len(WNIDS)] for i in range(val_per_class * len(WNIDS))]
    val = write_tar(root / "ILSVRC2012_img_val.tar",
                    {f"ILSVRC2012_val_{i:08d}.JPEG": jpeg(100 + i) for i in range(1, len(val_wnids) + 1)})
    if labels == "devkit":
        lab = devkit(root / "ILSVRC2012_devkit_t12.tar.gz", val_wnids)
    else:
        rows = "".join(f"ILSVRC2012_val_{i:08d},{w} 1 2 3 4\n" for i, w in enumerate(val_wnids, 1))
        lab = root / "LOC_val_solution.csv"
        lab.write_text("ImageId,PredictionString\n" + rows)
    n = len(WNIDS)
    return {"from": [train, val, lab], "counts": {"train": (per_class * n, n), "val": (val_per_class * n, n)},
            "val_wnids": val_wnids}


def variant_archives(root: Path, per_class: int = 2) -> dict:
    """ImageNet-V2 (tar.gz, folders 0..999), -Sketch (zip), -A and -R (tar), on the three WNIDS."""
    from fdalign.data.imagenet import imagenet_wnids

    order = list(imagenet_wnids())
    v2 = write_tar(root / "imagenetv2-matched-frequency.tar.gz", {
        f"imagenetv2-matched-frequency-format-val/{order.index(w)}/{c}{i:03d}abc.jpeg": jpeg(c * 7 + i)
        for c, w in enumerate(WNIDS) for i in range(per_class)})
    sk = write_zip(root / "ImageNet-Sketch.zip", {f"sketch/{w}/sketch_{i}.JPEG": jpeg(c + i) for c, w in enumerate(WNIDS)
                                                  for i in range(per_class)})
    a = write_tar(root / "imagenet-a.tar", {f"imagenet-a/{w}/0.{c}{i}_a.jpg": jpeg(c * 3 + i) for c, w in enumerate(WNIDS[1:])
                                            for i in range(per_class)} | {"imagenet-a/README.txt": b"ImageNet-A"})
    r = write_tar(root / "imagenet-r.tar", {f"imagenet-r/{w}/art_{c}{i}.jpg": jpeg(c * 5 + i) for c, w in enumerate(WNIDS[1:])
                                            for i in range(per_class)} | {"imagenet-r/README.txt": b"ImageNet-R"})
    n = len(WNIDS)
    return {
        "imagenetv2": ([v2], {"test": (per_class * n, n)}),
        "imagenet-sketch": ([sk], {"test": (per_class * n, n)}),
        "imagenet-a": ([a], {"test": (per_class * (n - 1), n - 1)}),
        "imagenet-r": ([r], {"test": (per_class * (n - 1), n - 1)}),
    }
