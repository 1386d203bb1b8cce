"""Data sources: the bundled synthetic claims generator and the hash-checked shared datasets."""

from risklens.datasets.shared import SHARED_DATASETS, DatasetIntegrityError, load_shared, shared_data_dir
from risklens.datasets.synthetic import PLANTED_RULES, generate_claims

__all__ = [
    "PLANTED_RULES",
    "SHARED_DATASETS",
    "DatasetIntegrityError",
    "generate_claims",
    "load_shared",
    "shared_data_dir",
]
