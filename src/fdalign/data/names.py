"""Data-set names: the key tables are indexed by, and the name a data path implies."""

from __future__ import annotations

import re
from pathlib import Path

DATASET_ALIASES = {
    "fgvcaircraft": "aircraft",
    "fgvc": "aircraft",
    "describabletextures": "dtd",
    "oxfordflowers": "flowers102",
    "flowers": "flowers102",
    "oxfordflowers102": "flowers102",
    "pets": "oxfordpets",
    "cars": "stanfordcars",
    "caltech": "caltech101",
    "food": "food101",
    "sun": "sun397",
    "ucf": "ucf101",
    "standfordcars": "stanfordcars",  # the authors' spelling in their index folders and scripts
}


def dataset_key(name: str) -> str:
    """``'Oxford Flowers'`` -> ``flowers102``: the key that data-set tables (LRs, heads, published numbers) use."""
    k = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return DATASET_ALIASES.get(k, k)


def guess_dataset_name(data: str | None) -> str | None:
    """``.../split_zhou_OxfordPets.json`` -> ``OxfordPets``; ``indices/dtd/<file>.json`` -> ``dtd``;
    ``imagenet/images`` (CoOp's layout) -> ``imagenet``; another folder -> its name."""
    if not data:
        return None
    p = Path(data)
    m = re.fullmatch(r"split_zhou_(.+)\.json", p.name)
    if m:
        return m.group(1)
    if re.fullmatch(r"shot_\d+-seed_\d+\.json", p.name) or p.parent.parent.name == "indices":
        return p.parent.name or None
    if not p.suffix and p.name == "images" and p.parent.name:
        return p.parent.name
    return (p.stem if p.suffix else p.name) or None
