"""One array representation for tree ensembles from XGBoost, LightGBM and scikit-learn.

Every adapter turns a library model into per-tree node tables; :func:`build_ensemble` concatenates
them and re-lays each tree out in pre-order (parent index < child index, every subtree a contiguous
range), which is what the SHAP kernels walk.

Split semantics kept per node, because the libraries differ:

* ``kind``: ``KIND_LT`` (XGBoost: ``x < t`` goes left), ``KIND_LE`` (LightGBM, scikit-learn:
  ``x <= t`` goes left) or ``KIND_CAT`` (a category set; ``cat_in_left`` says whether members go
  left — LightGBM and scikit-learn — or right — XGBoost). Negative or invalid categories are
  treated as "not a member".
* ``nan_mode``: ``NAN_DEFAULT`` (NaN follows ``default_left``), ``NAN_AS_ZERO`` (LightGBM
  ``missing_type=None``: NaN is compared as 0.0), ``NAN_ZERO_DEFAULT`` (LightGBM ``missing_type=Zero``:
  NaN and 0.0 follow ``default_left``).
* ``input_float32``: XGBoost and scikit-learn trees compare float32 copies of the inputs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson

from risklens.errors import UnsupportedModel

KIND_LT = 0
KIND_LE = 1
KIND_CAT = 2

NAN_DEFAULT = 0
NAN_AS_ZERO = 1
NAN_ZERO_DEFAULT = 2

OUTPUT_LOG_ODDS = "log_odds"
OUTPUT_PROBABILITY = "probability"
OUTPUT_RAW = "raw"


@dataclass
class TreeTable:
    """One tree in a library's own node order; ``left``/``right`` are -1 at leaves."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    kind: np.ndarray
    default_left: np.ndarray
    nan_mode: np.ndarray
    value: np.ndarray
    cover: np.ndarray
    categories: dict[int, np.ndarray] = field(default_factory=dict)
    cat_in_left: bool = True


@dataclass
class TreeEnsemble:
    """All trees of a model, concatenated, each in pre-order. Node ids are global."""

    tree_start: np.ndarray  # (n_trees + 1,) int64
    left: np.ndarray  # int32, -1 at leaves
    right: np.ndarray  # int32
    parent: np.ndarray  # int32, -1 at roots
    subtree_end: np.ndarray  # int32, one past the last node of the node's subtree
    feature: np.ndarray  # int32
    threshold: np.ndarray  # float64
    kind: np.ndarray  # int8
    default_left: np.ndarray  # bool
    nan_mode: np.ndarray  # int8
    cat_start: np.ndarray  # int32 into ``cats``
    cat_end: np.ndarray  # int32
    cats: np.ndarray  # float64 sorted category codes per categorical node
    cat_in_left: np.ndarray  # bool
    value: np.ndarray  # float64 (leaf values; internal nodes 0)
    cover: np.ndarray  # float64
    base_offset: float
    n_features: int
    feature_names: list[str] | None
    input_float32: bool
    output_space: str
    family: str
    # category lists for pandas ``category`` columns: by column name (XGBoost), or in the order the
    # categorical columns appear (LightGBM's pandas_categorical)
    feature_categories: dict[str, list[Any]] = field(default_factory=dict)
    ordered_categories: list[list[Any]] = field(default_factory=list)

    @property
    def n_trees(self) -> int:
        return len(self.tree_start) - 1

    @property
    def n_nodes(self) -> int:
        return len(self.left)

    @property
    def max_depth(self) -> int:
        depth = np.zeros(self.n_nodes, dtype=np.int64)
        ancestor = self.parent.astype(np.int64)
        while (above := ancestor >= 0).any():  # one step up every path at once
            depth[above] += 1
            ancestor[above] = self.parent[ancestor[above]]
        return int(depth.max()) if self.n_nodes else 0


def build_ensemble(
    trees: list[TreeTable],
    *,
    base_offset: float,
    n_features: int,
    feature_names: list[str] | None,
    input_float32: bool,
    output_space: str,
    family: str,
    feature_categories: dict[str, list[Any]] | None = None,
    ordered_categories: list[list[Any]] | None = None,
) -> TreeEnsemble:
    """Concatenate the trees, each renumbered in pre-order (root, left subtree, right subtree).

    Done on all trees at once, level by level from the roots (a tree's nodes reachable from its
    root are kept): subtree sizes bottom-up, then each node's pre-order position top-down. Tree by
    tree, a 500-tree model took ~80 ms of Python loops and small array operations in every process
    that loaded it.
    """
    sizes = np.array([len(tree.left) for tree in trees], dtype=np.int64)
    first = np.cumsum(sizes) - sizes  # each tree's root in the concatenation (library order)
    tree_of = np.repeat(np.arange(len(trees)), sizes)

    def joined(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(t, name), dtype=dtype) for t in trees]) if trees \
            else np.zeros(0, dtype=dtype)

    local_left, local_right = joined("left", np.int64), joined("right", np.int64)
    leaf = local_left < 0
    left = np.where(leaf, -1, local_left + first[tree_of])
    right = np.where(leaf, -1, local_right + first[tree_of])
    levels = []
    frontier = first
    while len(frontier):
        levels.append(frontier)
        internal = frontier[left[frontier] >= 0]
        frontier = np.concatenate((left[internal], right[internal]))
    size = np.ones(len(left), dtype=np.int64)
    for level in reversed(levels):
        internal = level[left[level] >= 0]
        size[internal] = 1 + size[left[internal]] + size[right[internal]]
    tree_start = np.concatenate(([0], np.cumsum(size[first]))).astype(np.int64)
    position = np.full(len(left), -1, dtype=np.int64)
    position[first] = tree_start[:-1]
    for level in levels:
        internal = level[left[level] >= 0]
        position[left[internal]] = position[internal] + 1
        position[right[internal]] = position[internal] + 1 + size[left[internal]]
    reached = np.concatenate(levels) if levels else np.zeros(0, dtype=np.int64)
    order = np.empty(len(reached), dtype=np.int64)  # library node of each pre-order position
    order[position[reached]] = reached
    n = len(order)
    is_leaf = leaf[order]
    new_left = np.where(is_leaf, -1, position[np.maximum(left[order], 0)])
    new_right = np.where(is_leaf, -1, position[np.maximum(right[order], 0)])
    parent = np.full(n, -1, dtype=np.int64)
    internal = np.flatnonzero(~is_leaf)
    parent[new_left[internal]] = internal
    parent[new_right[internal]] = internal
    cat_start = np.zeros(n, dtype=np.int64)
    cat_end = np.zeros(n, dtype=np.int64)
    cats: list[np.ndarray] = []
    n_cats = 0
    for t, tree in enumerate(trees):
        for old_node, members in tree.categories.items():
            i = position[first[t] + old_node]
            members = np.unique(np.asarray(members, dtype=np.float64))
            cat_start[i] = n_cats
            n_cats += len(members)
            cat_end[i] = n_cats
            cats.append(members)
    cat_in_left = np.repeat(np.array([tree.cat_in_left for tree in trees], dtype=bool), sizes)
    parts = {
        "left": new_left, "right": new_right, "parent": parent, "subtree_end": np.arange(n) + size[order],
        "feature": np.where(is_leaf, 0, joined("feature", np.int64)[order]),
        "threshold": np.where(is_leaf, 0.0, joined("threshold", np.float64)[order]),
        "kind": joined("kind", np.int8)[order], "default_left": joined("default_left", np.bool_)[order],
        "nan_mode": joined("nan_mode", np.int8)[order],
        "value": np.where(is_leaf, joined("value", np.float64)[order], 0.0),
        "cover": joined("cover", np.float64)[order], "cat_start": cat_start, "cat_end": cat_end,
        "cat_in_left": cat_in_left[order],
    }

    def cat(name: str, dtype: Any) -> np.ndarray:
        return np.ascontiguousarray(parts[name].astype(dtype))

    return TreeEnsemble(
        tree_start=tree_start,
        left=cat("left", np.int32),
        right=cat("right", np.int32),
        parent=cat("parent", np.int32),
        subtree_end=cat("subtree_end", np.int32),
        feature=cat("feature", np.int32),
        threshold=cat("threshold", np.float64),
        kind=cat("kind", np.int8),
        default_left=cat("default_left", np.bool_),
        nan_mode=cat("nan_mode", np.int8),
        cat_start=cat("cat_start", np.int32),
        cat_end=cat("cat_end", np.int32),
        cats=np.concatenate(cats) if cats else np.zeros(0, dtype=np.float64),
        cat_in_left=cat("cat_in_left", np.bool_),
        value=cat("value", np.float64),
        cover=cat("cover", np.float64),
        base_offset=float(base_offset),
        n_features=int(n_features),
        feature_names=feature_names,
        input_float32=input_float32,
        output_space=output_space,
        family=family,
        feature_categories=feature_categories or {},
        ordered_categories=ordered_categories or [],
    )


# --------------------------------------------------------------------------- XGBoost

_XGB_LOGIT_OBJECTIVES = {"binary:logistic", "reg:logistic", "binary:hinge"}
_XGB_LOG_OBJECTIVES = {"count:poisson", "reg:gamma", "reg:tweedie", "survival:cox", "survival:aft"}


def _from_xgboost(model: Any) -> TreeEnsemble:
    import xgboost

    booster = model.get_booster() if isinstance(model, xgboost.XGBModel) else model
    raw = booster.save_raw("json")
    try:
        doc = orjson.loads(raw)  # json.loads took 25 ms of a 500-tree model's 0.08 s normalisation
    except orjson.JSONDecodeError:  # NaN / Infinity, which only Python's json reads
        doc = json.loads(raw)
    learner = doc["learner"]
    gbm = learner["gradient_booster"]
    if gbm.get("name") not in ("gbtree", None):
        raise UnsupportedModel(f"XGBoost booster {gbm.get('name')!r} is not supported; only 'gbtree' is")
    params = learner["learner_model_param"]
    if int(params.get("num_class", "0")) > 1 or int(params.get("num_target", "1")) > 1:
        raise UnsupportedModel("multi-class / multi-target XGBoost models are not supported (binary or regression only)")
    objective = learner["objective"]["name"]
    base_score = float(str(params["base_score"]).strip("[]").split(",")[0])
    if objective in _XGB_LOGIT_OBJECTIVES:
        base_offset = math.log(base_score / (1.0 - base_score))
        output_space = OUTPUT_LOG_ODDS
    elif objective in _XGB_LOG_OBJECTIVES:
        base_offset = math.log(base_score)
        output_space = OUTPUT_RAW
    else:
        base_offset = base_score
        output_space = OUTPUT_LOG_ODDS if objective == "binary:logitraw" else OUTPUT_RAW
    tables = gbm["model"]["trees"]
    if any(int(t["tree_param"].get("size_leaf_vector", "1")) > 1 for t in tables):
        raise UnsupportedModel("XGBoost vector-leaf trees are not supported")
    sizes = [len(t["left_children"]) for t in tables]
    ends = np.cumsum(sizes)[:-1]

    def column(key: str, dtype: Any) -> np.ndarray:
        """``key`` of every tree, concatenated (one conversion, not one per tree: 500 trees took ~25 ms)."""
        values = chain.from_iterable(t[key] if key in t else [0] * n for t, n in zip(tables, sizes))
        return np.fromiter(values, dtype=dtype, count=sum(sizes))

    left = column("left_children", np.int64)
    is_leaf = left < 0
    # leaves keep their value in split_conditions
    condition = column("split_conditions", np.float32).astype(np.float64)
    split = {
        "left": left, "right": column("right_children", np.int64), "feature": column("split_indices", np.int64),
        "threshold": np.where(is_leaf, 0.0, condition),
        "kind": np.where(column("split_type", np.int64) == 1, KIND_CAT, KIND_LT).astype(np.int8),
        "default_left": column("default_left", np.bool_), "nan_mode": np.full(len(left), NAN_DEFAULT, dtype=np.int8),
        "value": np.where(is_leaf, condition, 0.0), "cover": column("sum_hessian", np.float32).astype(np.float64),
    }
    per_tree = {name: np.split(values, ends) for name, values in split.items()}
    trees = []
    for i, t in enumerate(tables):
        categories: dict[int, np.ndarray] = {}
        seg = t.get("categories_segments", [])
        for node, start, size in zip(t.get("categories_nodes", []), seg, t.get("categories_sizes", [])):
            categories[int(node)] = np.asarray(t["categories"][start:start + size], dtype=np.float64)
        trees.append(TreeTable(**{name: arrays[i] for name, arrays in per_tree.items()}, categories=categories,
                               cat_in_left=False))  # XGBoost sends members of the category set to the right child
    names = list(booster.feature_names) if booster.feature_names else None
    feature_categories: dict[str, list[Any]] = {}
    if names and booster.feature_types and "c" in booster.feature_types:
        try:
            for name, values in booster.get_categories(export_to_arrow=True).to_arrow():
                if values is not None:
                    feature_categories[name] = values.to_pylist()
        except (AttributeError, TypeError, ValueError):
            feature_categories = {}
    return build_ensemble(
        trees, base_offset=base_offset, n_features=int(params["num_feature"]), feature_names=names,
        input_float32=True, output_space=output_space, family="xgboost", feature_categories=feature_categories,
    )


# --------------------------------------------------------------------------- LightGBM

def _from_lightgbm(model: Any) -> TreeEnsemble:
    import lightgbm

    booster = model.booster_ if isinstance(model, lightgbm.LGBMModel) else model
    dump = booster.dump_model()
    if dump.get("num_tree_per_iteration", 1) != 1:
        raise UnsupportedModel("multi-class LightGBM models are not supported (binary or regression only)")
    if dump.get("average_output", False):
        raise UnsupportedModel("LightGBM random-forest mode (average_output) is not supported")
    objective = str(dump.get("objective", "")).split(" ")[0]
    output_space = OUTPUT_LOG_ODDS if objective in ("binary", "cross_entropy") else OUTPUT_RAW
    missing_modes = {"None": NAN_AS_ZERO, "Zero": NAN_ZERO_DEFAULT, "NaN": NAN_DEFAULT}
    trees = []
    for info in dump["tree_info"]:
        rows: list[dict[str, Any]] = []
        left: list[int] = []
        right: list[int] = []
        stack = [(info["tree_structure"], -1, False)]
        while stack:
            node, parent, is_left = stack.pop()
            idx = len(rows)
            rows.append(node)
            left.append(-1)
            right.append(-1)
            if parent >= 0:
                (left if is_left else right)[parent] = idx
            if "split_feature" in node:
                stack.append((node["right_child"], idx, False))
                stack.append((node["left_child"], idx, True))
        n = len(rows)
        feature = np.zeros(n, dtype=np.int64)
        threshold = np.zeros(n)
        kind = np.full(n, KIND_LE, dtype=np.int8)
        default_left = np.zeros(n, dtype=bool)
        nan_mode = np.full(n, NAN_DEFAULT, dtype=np.int8)
        value = np.zeros(n)
        cover = np.zeros(n)
        categories: dict[int, np.ndarray] = {}
        for i, node in enumerate(rows):
            if "split_feature" in node:
                feature[i] = node["split_feature"]
                default_left[i] = bool(node["default_left"])
                nan_mode[i] = missing_modes[node.get("missing_type", "None")]
                cover[i] = node.get("internal_count", 0)
                if node["decision_type"] == "==":
                    kind[i] = KIND_CAT
                    categories[i] = np.asarray([float(c) for c in str(node["threshold"]).split("||")])
                else:
                    threshold[i] = float(node["threshold"])
            else:
                value[i] = node["leaf_value"]
                cover[i] = node.get("leaf_count", 0)
        trees.append(TreeTable(
            left=np.asarray(left, dtype=np.int64), right=np.asarray(right, dtype=np.int64), feature=feature,
            threshold=threshold, kind=kind, default_left=default_left, nan_mode=nan_mode, value=value,
            cover=cover, categories=categories, cat_in_left=True,
        ))
    names = list(dump.get("feature_names") or []) or None
    # LightGBM maps the k-th categorical DataFrame column onto the k-th stored category list
    ordered_categories = [list(c) for c in (dump.get("pandas_categorical") or [])]
    return build_ensemble(
        trees, base_offset=0.0, n_features=int(dump["max_feature_idx"]) + 1, feature_names=names,
        input_float32=False, output_space=output_space, family="lightgbm",
        ordered_categories=ordered_categories,
    )


# --------------------------------------------------------------------------- scikit-learn

def _sklearn_tree_table(tree: Any, leaf_value: np.ndarray) -> TreeTable:
    n = tree.node_count
    missing_left = getattr(tree, "missing_go_to_left", None)
    return TreeTable(
        left=np.asarray(tree.children_left, dtype=np.int64),
        right=np.asarray(tree.children_right, dtype=np.int64),
        feature=np.maximum(np.asarray(tree.feature, dtype=np.int64), 0),
        threshold=np.asarray(tree.threshold, dtype=np.float64),
        kind=np.full(n, KIND_LE, dtype=np.int8),
        default_left=(np.asarray(missing_left, dtype=bool) if missing_left is not None else np.zeros(n, dtype=bool)),
        nan_mode=np.full(n, NAN_DEFAULT, dtype=np.int8),
        value=np.asarray(leaf_value, dtype=np.float64),
        cover=np.asarray(tree.weighted_n_node_samples, dtype=np.float64),
    )


def _classifier_positive_fraction(tree: Any) -> np.ndarray:
    counts = tree.value[:, 0, :]
    if counts.shape[1] != 2:
        raise UnsupportedModel(f"only binary classifiers are supported; this tree has {counts.shape[1]} classes")
    return counts[:, 1] / counts.sum(axis=1)


def _sklearn_names(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def _from_sklearn_forest(model: Any) -> TreeEnsemble:
    from sklearn.base import is_classifier

    estimators = getattr(model, "estimators_", None) or [model]
    classifier = is_classifier(model)
    scale = 1.0 / len(estimators)
    trees = []
    for est in estimators:
        t = est.tree_
        if t.n_outputs != 1:
            raise UnsupportedModel("multi-output scikit-learn trees are not supported")
        leaf = _classifier_positive_fraction(t) if classifier else t.value[:, 0, 0]
        trees.append(_sklearn_tree_table(t, leaf * scale))
    return build_ensemble(
        trees, base_offset=0.0, n_features=int(model.n_features_in_), feature_names=_sklearn_names(model),
        input_float32=True, output_space=OUTPUT_PROBABILITY if classifier else OUTPUT_RAW, family="sklearn",
    )


def _from_sklearn_gradient_boosting(model: Any) -> TreeEnsemble:
    from sklearn.base import is_classifier

    if model.estimators_.shape[1] != 1:
        raise UnsupportedModel("multi-class GradientBoostingClassifier is not supported (binary only)")
    zero_row = np.zeros((1, model.n_features_in_), dtype=np.float32)
    base_offset = float(np.asarray(model._raw_predict_init(zero_row)).ravel()[0])
    trees = [
        _sklearn_tree_table(est.tree_, est.tree_.value[:, 0, 0] * model.learning_rate)
        for est in model.estimators_[:, 0]
    ]
    classifier = is_classifier(model)
    return build_ensemble(
        trees, base_offset=base_offset, n_features=int(model.n_features_in_), feature_names=_sklearn_names(model),
        input_float32=True, output_space=OUTPUT_LOG_ODDS if classifier else OUTPUT_RAW, family="sklearn",
    )


def _from_sklearn_hist_gradient_boosting(model: Any) -> TreeEnsemble:
    from sklearn.base import is_classifier

    predictors = model._predictors
    if predictors and len(predictors[0]) != 1:
        raise UnsupportedModel("multi-class HistGradientBoostingClassifier is not supported (binary only)")
    names = _sklearn_names(model)
    # with categorical_features="from_dtype" the trees see [ordinal-encoded categoricals, numericals]
    column_of = np.arange(model.n_features_in_)
    feature_categories: dict[str, list[Any]] = {}
    preprocessor = getattr(model, "_preprocessor", None)
    if preprocessor is not None:
        masks = {name: np.asarray(mask, dtype=bool) for name, _, mask in preprocessor.transformers_
                 if name != "remainder"}
        encoded = np.flatnonzero(masks["encoder"])
        column_of = np.concatenate([encoded, np.flatnonzero(masks["numerical"])])
        encoder = preprocessor.named_transformers_["encoder"]
        if names is not None:
            for col, cats in zip(encoded, encoder.categories_):
                # the encoder lists NaN last as a "category"; it is encoded as missing
                feature_categories[names[col]] = [c for c in cats if not (isinstance(c, float) and math.isnan(c))]
    trees = []
    for (predictor,) in predictors:
        nodes = predictor.nodes
        n = len(nodes)
        is_leaf = nodes["is_leaf"].astype(bool)
        is_cat = nodes["is_categorical"].astype(bool) & ~is_leaf
        categories: dict[int, np.ndarray] = {}
        for i in np.flatnonzero(is_cat):
            words = predictor.raw_left_cat_bitsets[nodes["bitset_idx"][i]]
            bits = np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little")
            categories[int(i)] = np.flatnonzero(bits).astype(np.float64)
        trees.append(TreeTable(
            left=np.where(is_leaf, -1, nodes["left"].astype(np.int64)),
            right=np.where(is_leaf, -1, nodes["right"].astype(np.int64)),
            feature=column_of[nodes["feature_idx"].astype(np.int64)],
            threshold=nodes["num_threshold"].astype(np.float64),
            kind=np.where(is_cat, KIND_CAT, KIND_LE).astype(np.int8),
            default_left=nodes["missing_go_to_left"].astype(bool),
            nan_mode=np.full(n, NAN_DEFAULT, dtype=np.int8),
            value=nodes["value"].astype(np.float64),
            cover=nodes["count"].astype(np.float64),
            categories=categories,
            cat_in_left=True,
        ))
    classifier = is_classifier(model)
    return build_ensemble(
        trees, base_offset=float(np.asarray(model._baseline_prediction).ravel()[0]),
        n_features=int(model.n_features_in_), feature_names=names, input_float32=False,
        output_space=OUTPUT_LOG_ODDS if classifier else OUTPUT_RAW, family="sklearn",
        feature_categories=feature_categories,
    )


def normalize_model(model: Any) -> TreeEnsemble:
    """Turn a supported tree model into a :class:`TreeEnsemble` (raises ``UnsupportedModel``)."""
    if isinstance(model, TreeEnsemble):
        return model
    module = type(model).__module__ or ""
    name = type(model).__name__
    if module.startswith("xgboost"):
        return _from_xgboost(model)
    if module.startswith("lightgbm"):
        return _from_lightgbm(model)
    if module.startswith("sklearn"):
        if not hasattr(model, "n_features_in_"):
            raise UnsupportedModel(f"scikit-learn model {name} is not fitted")
        if name in ("RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier",
                    "ExtraTreesRegressor", "DecisionTreeClassifier", "DecisionTreeRegressor",
                    "ExtraTreeClassifier", "ExtraTreeRegressor"):
            return _from_sklearn_forest(model)
        if name in ("GradientBoostingClassifier", "GradientBoostingRegressor"):
            return _from_sklearn_gradient_boosting(model)
        if name in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"):
            return _from_sklearn_hist_gradient_boosting(model)
    raise UnsupportedModel(
        f"no tree adapter for {module}.{name}; expected an XGBoost, LightGBM or scikit-learn tree ensemble"
    )
