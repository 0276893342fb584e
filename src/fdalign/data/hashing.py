"""Content hashes of splits, recorded with each run so results can be tied to the exact images.

``split_hash`` returns ``"content:<sha256>"`` when it hashed every file's bytes and
``"list:<sha256>"`` when it hashed only (relative path, label, file size): the prefix says which,
so two recorded values are only ever compared like for like.
"""

from __future__ import annotations

import hashlib
import os

from fdalign.data.datasets import LabeledSplit
from fdalign.errors import FDAlignError
from fdalign.io import file_sha256


def split_hash(split: LabeledSplit, content: bool = True) -> str:
    """Hash of the sorted (relative path, label) list plus each file's bytes (or only its size).

    The relative paths make the hash independent of where the data is mounted; class names are not
    included (they only change prompts, which are recorded separately). ``content=False`` reads no
    image bytes, for large test sets where streaming every file is too slow.
    """
    rows = sorted((split.relpath(s), s.label, split.resolve(s)) for s in split.samples)
    h = hashlib.sha256()
    for rel, label, full in rows:
        try:
            digest = file_sha256(full) if content else str(os.path.getsize(full))
        except OSError as e:
            raise FDAlignError(f"cannot read {full} to hash split '{split.name}': {e.strerror or e}") from None
        # Length-prefixed fields so no two different lists serialise to the same bytes.
        for field in (rel, str(label), digest):
            b = field.encode("utf-8", "surrogateescape")  # a non-UTF-8 file name hashes as its bytes
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return f"{'content' if content else 'list'}:{h.hexdigest()}"
