"""Data: labelled image lists, loaders, K-shot sampling, OOD class mapping, checks and hashes."""

from fdalign.data.check import BENCHMARKS, Benchmark, CheckReport, check_splits, find_benchmark, verify_images
from fdalign.data.datasets import (
    ImageDataset,
    LabeledSplit,
    Sample,
    load_coop_split,
    load_csv,
    load_imagefolder,
    normalize_classname,
    pick_split,
    read_classnames,
    val_as_test,
)
from fdalign.data.fewshot import (
    fewshot_val,
    find_split_file,
    index_file_info,
    load_fewshot_indices,
    load_split,
    sample_fewshot,
    sample_kshot,
    save_fewshot_indices,
    save_split,
    val_shots,
)
from fdalign.data.hashing import split_hash
from fdalign.data.opener import open_dataset
from fdalign.data.ood import OODSet, load_ood_sets, map_ood_to_id, match_classes, parse_ood_arg

__all__ = [
    "BENCHMARKS", "Benchmark", "CheckReport", "ImageDataset", "LabeledSplit", "Sample",
    "check_splits", "fewshot_val", "find_benchmark", "load_coop_split", "load_csv",
    "load_fewshot_indices", "load_ood_sets", "load_imagefolder", "load_split", "map_ood_to_id", "normalize_classname",
    "open_dataset", "parse_ood_arg", "pick_split", "read_classnames", "sample_fewshot",
    "sample_kshot", "save_fewshot_indices", "save_split", "split_hash", "val_shots", "verify_images",
    "OODSet", "match_classes", "val_as_test", "index_file_info", "find_split_file",
]
