"""Data: labelled image lists, loaders, K-shot sampling, OOD class mapping, checks and hashes.

The names below are loaded on first use (PEP 562), so that light modules (``data.names``) can be
imported without torch: ``fdalign --help`` stays fast.
"""

import importlib

_LAZY = {  # name -> the module that defines it
    **dict.fromkeys(
        ("BENCHMARKS", "Benchmark", "CheckReport", "check_splits", "find_benchmark", "verify_images"),
        "fdalign.data.check",
    ),
    **dict.fromkeys(
        (
            "ImageDataset",
            "LabeledSplit",
            "Sample",
            "load_coop_split",
            "load_csv",
            "load_imagefolder",
            "normalize_classname",
            "pick_split",
            "read_classnames",
            "val_as_test",
        ),
        "fdalign.data.datasets",
    ),
    **dict.fromkeys(
        (
            "fewshot_val",
            "find_split_file",
            "index_file_info",
            "load_fewshot_indices",
            "load_split",
            "sample_fewshot",
            "sample_kshot",
            "save_fewshot_indices",
            "save_split",
            "val_shots",
        ),
        "fdalign.data.fewshot",
    ),
    **dict.fromkeys(("split_hash",), "fdalign.data.hashing"),
    **dict.fromkeys(("open_dataset",), "fdalign.data.opener"),
    **dict.fromkeys(("OODSet", "load_ood_sets", "map_ood_to_id", "match_classes", "parse_ood_arg"), "fdalign.data.ood"),
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fdalign.data' has no attribute {name!r}")


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "CheckReport",
    "ImageDataset",
    "LabeledSplit",
    "Sample",
    "check_splits",
    "fewshot_val",
    "find_benchmark",
    "load_coop_split",
    "load_csv",
    "load_fewshot_indices",
    "load_ood_sets",
    "load_imagefolder",
    "load_split",
    "map_ood_to_id",
    "normalize_classname",
    "open_dataset",
    "parse_ood_arg",
    "pick_split",
    "read_classnames",
    "sample_fewshot",
    "sample_kshot",
    "save_fewshot_indices",
    "save_split",
    "split_hash",
    "val_shots",
    "verify_images",
    "OODSet",
    "match_classes",
    "val_as_test",
    "index_file_info",
    "find_split_file",
]
