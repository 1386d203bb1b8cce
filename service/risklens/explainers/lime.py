"""LIME: the ``lime`` package's tabular explainer, reproducible per request and batched.

The explainer is configured from the model's background sample and schema: numeric features are
discretised into quartiles (lime's default), categorical and boolean features are declared
categorical with their schema categories as names. Each row is explained with its own seed from
``ExplainContext.seeds``, so the same seed always gives the same explanation.

Speed comes from three things, all measured in ``benchmarks/lime_speed.py`` against plain lime:
lime's perturbation scheme (bins drawn from background frequencies, numbers from a normal
truncated to their bin) and its local model (weighted ridge, alpha 1) are vectorised here on the
statistics lime's own explainer learnt from the background; the neighbourhoods of every row and of
its stability reruns are drawn first and the model is called once for all of them, on a model
matrix built straight from the codes; and the default sample count is chosen from the measured
stability and fit. ``explain_with_lime`` runs lime's own ``explain_instance`` for comparison.

A missing numeric value is explained as the background median (lime cannot sample around NaN).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd

from risklens.explainers.agreement import rank_agreement
from risklens.explainers.base import ClaimRows, ExplainContext, Explainer
from risklens.registry import LoadedModel
from risklens.v1 import risklens_pb2 as pb

# Chosen by benchmarks/lime_speed.py (see docs/methods.md): the smallest sample count whose top-k
# agreement with 5,000-sample lime matches 5,000-sample lime's own seed-to-seed agreement.
DEFAULT_SAMPLES = 1000
# Bounds on a request's sample count: below the lower one the local fit has fewer points than a
# wide schema has features (a fit of 1 or 2 samples reported a perfect score); the upper one is
# 4x lime's own default, so one claim costs at most a few MB and a fraction of a second.
MIN_SAMPLES, MAX_SAMPLES = 100, 20_000
# Neighbourhood rows sampled and scored per model call: a batch's memory stays bounded however
# many claims (and reruns) it holds.
_ROWS_PER_CALL = 1 << 18
# Reruns with other seeds behind the stability score.
STABILITY_RERUNS = 3
_SEED_MASK = (1 << 32) - 1


@dataclass(frozen=True)
class LimeResult:
    feature_contributions: np.ndarray  # LIME weight per schema feature (manifest order)
    conditions: list[str]  # lime's discretised condition per feature, e.g. "claim_amount > 8200.00"
    feature_names: list[str]
    intercept: float
    local_prediction: float
    fit_score: float
    stability: float
    seed: int
    num_samples: int

    def to_proto(self) -> pb.LimeResult:
        order = np.argsort(-np.abs(self.feature_contributions), kind="stable")
        weights = [pb.LimeWeight(feature=self.feature_names[j], condition=self.conditions[j],
                                 weight=float(self.feature_contributions[j])) for j in order]
        return pb.LimeResult(weights=weights, intercept=self.intercept, local_prediction=self.local_prediction,
                             fit_score=self.fit_score, stability=self.stability, seed=self.seed,
                             num_samples=self.num_samples)


def rerun_seed(seed: int, rerun: int) -> int:
    """Seed of the ``rerun``-th stability rerun (distinct from the request seed, still deterministic)."""
    return (seed * 1_000_003 + 7919 * rerun) & _SEED_MASK


class LimeSpace:
    """The numeric table lime works on: numbers as floats, categories and booleans as integer codes."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.specs = model.manifest.features
        self.names = [s.name for s in self.specs]
        self.categorical = [i for i, s in enumerate(self.specs) if s.type != "numeric"]
        self.category_names = {
            i: (list(s.categories) if s.type == "categorical" else ["False", "True"])
            for i, s in enumerate(self.specs) if s.type != "numeric"}
        background = model.background
        self.fill = {s.name: float(np.nanmedian(background[s.name].to_numpy(dtype="float64", na_value=np.nan)))
                     for s in self.specs if s.type == "numeric"}
        self.training = self.encode(background)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw validated features -> lime table (missing numbers become the background median)."""
        columns = []
        for spec in self.specs:
            col = frame[spec.name]
            if spec.type == "numeric":
                values = col.to_numpy(dtype="float64", na_value=np.nan)
                columns.append(np.where(np.isnan(values), self.fill[spec.name], values))
            elif spec.type == "boolean":
                columns.append(col.fillna(False).astype(bool).to_numpy(dtype="float64"))
            else:
                codes = pd.Categorical(col, categories=spec.categories).codes.astype("float64")
                columns.append(np.where(codes < 0, 0.0, codes))
        return np.column_stack(columns)

    def decode(self, table: np.ndarray) -> pd.DataFrame:
        """Lime table -> raw feature frame with schema dtypes (what a Pipeline model takes)."""
        data = {}
        for i, spec in enumerate(self.specs):
            col = table[:, i]
            if spec.type == "numeric":
                data[spec.name] = col.astype("float64")
            elif spec.type == "boolean":
                data[spec.name] = col > 0.5
            else:
                cats = np.asarray(spec.categories, dtype=object)
                data[spec.name] = pd.Series(cats[np.rint(col).astype(int)], dtype="str")
        return pd.DataFrame(data)

    def model_matrix(self, table: np.ndarray) -> np.ndarray:
        """Lime table -> the model matrix, straight from the codes (same as ``encode_frame`` on ``decode``)."""
        if self.model.is_pipeline:
            return self.model.model_matrix(self.decode(table))
        blocks = []
        for i, spec in enumerate(self.specs):
            col = table[:, i]
            if spec.type == "categorical" and spec.encoding == "onehot":
                codes = np.rint(col).astype(int)
                blocks.append((codes[:, None] == np.arange(len(spec.categories))[None, :]).astype("float64"))
            else:
                blocks.append(col[:, None])
        return np.hstack(blocks)

    def scores(self, table: np.ndarray) -> np.ndarray:
        """Model score (probability of the positive class, or the prediction) for each lime-table row."""
        return self.model.score_from_raw(self.model.raw_from_matrix(self.model_matrix(table)))

    def predict_proba(self, table: np.ndarray) -> np.ndarray:
        """lime's classifier function: (n, 2) class probabilities ((n,) predictions for regressions)."""
        score = self.scores(table)
        if self.model.manifest.task != "binary":
            return score
        return np.column_stack([1.0 - score, score])


@dataclass(frozen=True)
class _Fit:
    weights: np.ndarray
    intercept: float
    score: float
    local_prediction: float


def weighted_ridge(data: np.ndarray, labels: np.ndarray, weights: np.ndarray, alpha: float = 1.0) -> _Fit:
    """lime's local model, in closed form: ``Ridge(alpha=1)`` with intercept and sample weights, its
    weighted R^2 on the neighbourhood, and its prediction for the instance (row 0).

    The sums are numpy's own (``einsum``), not BLAS's: a BLAS product splits its work by the number
    of threads, and on 1 and 2 threads (a batch worker, a server) gave the same claim's LIME weights
    different last bits, so a replay on another thread count did not reproduce them. ~0.4 ms a fit
    more on 1,000 samples of 30 features, against ~19 ms for the claim's LIME.
    """
    total = weights.sum()
    x_mean = np.einsum("i,ij->j", weights, data) / total
    y_mean = float(np.einsum("i,i->", weights, labels) / total)
    centred = data - x_mean
    gram = np.einsum("ij,ik->jk", centred, centred * weights[:, None]) + alpha * np.eye(data.shape[1])
    coef = np.linalg.solve(gram, np.einsum("ij,i->j", centred, weights * (labels - y_mean)))
    intercept = y_mean - float(np.einsum("j,j->", x_mean, coef))
    fitted = np.einsum("ij,j->i", data, coef) + intercept
    residual = float(np.einsum("i,i->", weights, (labels - fitted) ** 2))
    spread = float(np.einsum("i,i->", weights, (labels - y_mean) ** 2))
    score = 1.0 - residual / spread if spread > 0 else 1.0
    return _Fit(coef, intercept, score, float(fitted[0]))


class LimeExplainer(Explainer):
    name = "lime"

    def __init__(self, model: LoadedModel) -> None:
        from lime.lime_tabular import LimeTabularExplainer

        super().__init__(model)
        self.space = LimeSpace(model)
        self.mode = "classification" if model.manifest.task == "binary" else "regression"
        self.lime = LimeTabularExplainer(
            self.space.training, mode=self.mode, feature_names=self.space.names,
            categorical_features=self.space.categorical, categorical_names=self.space.category_names,
            discretize_continuous=True, discretizer="quartile", feature_selection="none", random_state=0)
        # What lime learnt from the background, as arrays for the vectorised sampler: per feature the
        # bin (or category) values and their cumulative frequencies; per numeric bin its bounds,
        # mean and spread for the truncated-normal draw inside the bin.
        n = len(self.space.names)
        self._values = [np.asarray(self.lime.feature_values[f], dtype="float64") for f in range(n)]
        self._cumulative = [np.cumsum(self.lime.feature_frequencies[f]) for f in range(n)]
        self._bin_stats = {
            f: tuple(np.asarray(getattr(self.lime.discretizer, stat)[f], dtype="float64")
                     for stat in ("mins", "maxs", "means", "stds"))
            for f in self.lime.discretizer.means}
        width = float(np.sqrt(n) * 0.75)  # lime's default kernel width
        self._kernel_width = width
        # lime keeps one random state on the explainer, its discretizer and its local-fit base; the
        # lock keeps one call's reseeding of the reference path from interleaving with another's.
        self._lock = threading.Lock()

    @classmethod
    def supports(cls, model: LoadedModel) -> bool:
        return model.manifest.task in ("binary", "regression")

    # ------------------------------------------------------------------ the fast path

    def neighbourhood(self, row: np.ndarray, seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """lime's perturbation scheme, vectorised: (binary "same bin as the instance" data, lime table).

        Every feature's bin (quartile of a number, or category) is drawn from its background
        frequencies; numbers are then drawn from a normal truncated to the bin, with the bin's mean
        and spread. Row 0 is the instance itself. Unlike lime 0.2.0.1, a bin holding a single value
        yields that value (lime returns its z-score, 0, there).
        """
        rng = np.random.default_rng(seed & _SEED_MASK)
        n_features = len(self._values)
        instance_bins = self.lime.discretizer.discretize(row)
        uniform = rng.random((num_samples, n_features))
        bins = np.empty((num_samples, n_features))
        for f in range(n_features):
            index = np.searchsorted(self._cumulative[f], uniform[:, f], side="right")
            bins[:, f] = self._values[f][np.minimum(index, len(self._values[f]) - 1)]
        data = (bins == instance_bins).astype("float64")
        table = bins.copy()
        if self._bin_stats:
            from scipy.special import ndtr, ndtri

            inside = rng.random((num_samples, len(self._bin_stats)))
            for c, (f, (mins, maxs, means, stds)) in enumerate(self._bin_stats.items()):
                b = bins[:, f].astype(int)
                low, high = (mins[b] - means[b]) / stds[b], (maxs[b] - means[b]) / stds[b]
                p_low, p_high = ndtr(low), ndtr(high)
                z = ndtri(p_low + inside[:, c] * (p_high - p_low))
                values = np.clip(means[b] + stds[b] * z, mins[b], maxs[b])
                table[:, f] = np.where(maxs[b] > mins[b], values, mins[b])
        data[0] = 1.0
        table[0] = row
        return data, table

    def kernel(self, data: np.ndarray) -> np.ndarray:
        """lime's proximity weights: exponential kernel on the distance to the instance (row 0)."""
        distances = np.sqrt(((data - data[0]) ** 2).sum(axis=1))
        return np.sqrt(np.exp(-(distances ** 2) / self._kernel_width ** 2))

    def conditions(self, row: np.ndarray) -> list[str]:
        """lime's readable condition per feature ("claim_amount > 8200.00", "fault=third_party")."""
        names = list(self.space.names)
        discretizer = self.lime.discretizer
        binned = discretizer.discretize(row)
        for i in range(len(names)):
            if i in discretizer.names:
                names[i] = discretizer.names[i][int(binned[i])]
            else:
                names[i] = f"{names[i]}={self.space.category_names[i][int(row[i])]}"
        return names

    def explain_table(self, table: np.ndarray, seeds: list[int], num_samples: int, top_k: int,
                      reruns: int = STABILITY_RERUNS) -> list[LimeResult]:
        """Explain lime-table rows: every neighbourhood first, one model call for all, then one fit each."""
        jobs: list[tuple[int, int]] = []  # (row, seed): the row's own seed first, then its reruns
        for row, seed in enumerate(seeds):
            jobs.append((row, seed))
            jobs += [(row, rerun_seed(seed, r)) for r in range(1, reruns + 1)]
        jobs_per_call = max(1, _ROWS_PER_CALL // num_samples)
        fits = []
        for first in range(0, len(jobs), jobs_per_call):
            samples = [self.neighbourhood(table[row], seed, num_samples) for row, seed in jobs[first:first + jobs_per_call]]
            predictions = self.space.scores(np.vstack([sample for _, sample in samples]))
            fits += [weighted_ridge(data, predictions[i * num_samples:(i + 1) * num_samples], self.kernel(data))
                     for i, (data, _) in enumerate(samples)]
        results = []
        per_row = reruns + 1
        for row, seed in enumerate(seeds):
            main, *others = fits[row * per_row:(row + 1) * per_row]
            stability = (float(np.mean([rank_agreement(main.weights, o.weights, top_k) for o in others]))
                         if others else 1.0)
            results.append(LimeResult(
                feature_contributions=main.weights, conditions=self.conditions(table[row]),
                feature_names=self.space.names, intercept=main.intercept,
                local_prediction=main.local_prediction, fit_score=main.score, stability=stability,
                seed=int(seed), num_samples=num_samples))
        return results

    def explain(self, claims: ClaimRows, context: ExplainContext) -> list[LimeResult]:
        num_samples = context.lime_samples or DEFAULT_SAMPLES
        return self.explain_table(self.space.encode(claims.frame), context.seeds, num_samples, max(1, context.top_k))

    # ------------------------------------------------------------------ plain lime, for comparison

    def explain_with_lime(self, row: np.ndarray, seed: int, num_samples: int = 5000,
                          num_features: int | None = None) -> tuple[np.ndarray, float]:
        """lime's own ``explain_instance`` on one lime-table row: (weight per feature, fit R^2).

        ``num_features=None`` keeps every feature (the service's setting); lime's default is 10.
        """
        with self._lock:
            state = np.random.RandomState(seed & _SEED_MASK)
            self.lime.random_state = self.lime.base.random_state = self.lime.discretizer.random_state = state
            explanation = self.lime.explain_instance(
                row, self.space.predict_proba, num_features=num_features or len(row), num_samples=num_samples)
        weights = np.zeros(len(row))
        label = 1 if self.mode == "classification" else 0
        for j, w in explanation.local_exp[label]:
            weights[j] = w
        return weights, float(explanation.score)
