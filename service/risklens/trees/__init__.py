"""Exact TreeSHAP engine: one normalized tree representation, numba CPU kernels, NumPy/CuPy array path."""

from risklens.trees._cpu import TABLE_KERNEL_MIN_ROWS
from risklens.trees._ensemble import TreeEnsemble, normalize_model
from risklens.trees._explainer import TreeShap
from risklens.trees._explainer import _gpu_available as gpu_available

__all__ = ["TABLE_KERNEL_MIN_ROWS", "TreeEnsemble", "TreeShap", "gpu_available", "normalize_model"]
