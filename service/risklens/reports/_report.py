"""The audit report: one self-contained HTML file (plots inlined as PNG) built from a finished run.

Every section is computed from the run's own outputs (claims.parquet, the method results stored
with it as risklens.v1 messages) and the model; a section whose inputs the run does not have says
so in plain words instead of showing made-up numbers.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from risklens.errors import InvalidRequest
from risklens.registry import LoadedModel, ModelRegistry, claims_frame, validate_claim
from risklens.reports._faithfulness import faithfulness_curves
from risklens.reports._runner import CLAIMS_FILE, run_summary
from risklens.reports._table import ClaimsTable, read_claims_table
from risklens.reports._worker import CONTRIBUTION_SEPARATOR
from risklens.v1 import risklens_pb2 as pb

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
TEMPLATES_ENV = "RISKLENS_REPORT_TEMPLATES"
TOP_FEATURES = 12
FAITHFULNESS_ROWS = 200
BEESWARM_CLAIMS = 3000
ICE_CURVES = 200  # per panel
FLAGGED_ROWS = 25
FLAGGED_FILE = "flagged.csv"
FLAGGED_COLUMNS = ["claim_id", "score", "decision", "why", "reason_codes", "receipt_id"]
PALETTE = {"refer": "#c0392b", "pass": "#2e86c1"}


@dataclass
class Section:
    key: str
    title: str
    intro: str = ""
    images: list[dict[str, str]] = field(default_factory=list)  # {"src": data URI, "alt": text}
    facts: list[tuple[str, str]] = field(default_factory=list)
    table: dict[str, Any] | None = None  # {"columns": [...], "rows": [[...]]}
    unavailable: str = ""  # non-empty: the plain reason this section has no content


def templates_dir() -> Path:
    """The report templates: $RISKLENS_REPORT_TEMPLATES, else the repository's reports/templates."""
    if os.environ.get(TEMPLATES_ENV):
        return Path(os.environ[TEMPLATES_ENV])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "reports" / "templates"
        if (candidate / "report.html.j2").is_file():
            return candidate
    raise InvalidRequest(f"report templates not found; set {TEMPLATES_ENV} to the reports/templates folder")


# ------------------------------------------------------------------------------------------ plots


def _figure(width: float = 7.5, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _png(fig: Any, alt: str) -> dict[str, str]:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return {"src": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), "alt": alt}


def _messages(claims: pd.DataFrame, method: str, message_type: type) -> list[Any]:
    column = f"{method}_result"
    if column not in claims:
        return []
    return [message_type.FromString(b) for b in claims[column].dropna() if b]


def _contributions(claims: pd.DataFrame, method: str, names: list[str]) -> np.ndarray | None:
    columns = [f"{method}{CONTRIBUTION_SEPARATOR}{n}" for n in names]
    if not all(c in claims for c in columns):
        return None
    return claims[columns].to_numpy(dtype="float64")


# ------------------------------------------------------------------------------------------ sections


def _model_card(model: LoadedModel, run: dict, claims: pd.DataFrame) -> Section:
    identity, summary = run["identity"], run["summary"]
    m = model.manifest
    section = Section("model-card", "Model card", intro=m.description or "")
    section.facts = [
        ("Model", f"{m.name} version {m.version} ({m.framework}, {model.kind}, output {model.output_space})"),
        ("Model sha256", m.sha256), ("Data", Path(identity["data"]).name), ("Data sha256", identity["data_sha256"]),
        ("Rows in the table", f"{identity['rows']:,}"), ("Explained", f"{summary.get('explained', len(claims)):,}"),
        ("Rejected (schema)", f"{summary.get('rejected', 0):,} (see rejects.csv)"),
        ("Decision threshold", f"{m.threshold:g} (score at or above: refer)"),
        ("Referred", f"{(claims['decision'] == 'refer').mean():.1%} of explained claims" if len(claims) else "-"),
    ]
    if "label" in claims and claims["label"].notna().any():
        labelled = claims[claims["label"].notna()]
        y, score = labelled["label"].to_numpy(dtype=int), labelled["score"].to_numpy()
        if len(set(y)) == 2:
            from sklearn.metrics import average_precision_score, roc_auc_score

            section.facts += [
                ("Labelled claims", f"{len(labelled):,} ({y.mean():.1%} positive; the metrics below are "
                                    f"measured on them, in-sample for any the model was trained on)"),
                ("ROC AUC", f"{roc_auc_score(y, score):.3f}"),
                ("PR AUC (average precision)", f"{average_precision_score(y, score):.3f} "
                                               f"(a random model scores {y.mean():.3f})"),
            ]
        else:
            section.facts.append(("Metrics", "not computed: the labelled claims hold only one class"))
    elif "label" in claims:
        section.facts.append(("Metrics", "not computed: no explained claim has a 0/1 label"))
    else:
        section.facts.append(("Metrics", "not computed: the run had no label column (--label)"))
    return section


def _shap_sections(claims: pd.DataFrame, names: list[str], features: pd.DataFrame | None,
                   model: LoadedModel) -> tuple[Section, list[str]]:
    section = Section("shap", "Global SHAP importance",
                      intro="Mean absolute SHAP contribution per feature over every explained claim, and how "
                            "each feature's values push individual claims up or down (beeswarm: up to "
                            f"{BEESWARM_CLAIMS:,} claims drawn at random).")
    values = _contributions(claims, "shap", names)
    if values is None or not len(values):
        section.unavailable = "no explained claims"
        return section, names[:TOP_FEATURES]
    importance = np.abs(values).mean(axis=0)
    order = np.argsort(-importance)[:TOP_FEATURES]
    top = [names[j] for j in order]
    labels = [model.manifest.feature(n).display_name for n in top]
    fig, ax = _figure(7.5, 0.32 * len(top) + 1.0)
    ax.barh(range(len(top))[::-1], importance[order], color="#2e86c1")
    ax.set_yticks(range(len(top))[::-1], labels)
    ax.set_xlabel(f"mean |SHAP| ({model.output_space.replace('_', '-')})")
    section.images.append(_png(fig, "bar chart of mean absolute SHAP per feature"))

    fig, ax = _figure(7.5, 0.38 * len(top) + 1.2)
    rng = np.random.default_rng(0)
    shown = rng.choice(len(values), size=min(len(values), BEESWARM_CLAIMS), replace=False)
    rows = claims["row"].to_numpy()[shown]  # the claims' own rows of the table (rejected rows are not in claims)
    for rank, j in enumerate(order):
        y = len(order) - 1 - rank + rng.uniform(-0.3, 0.3, size=len(shown))
        style: dict[str, Any] = {"color": "#7f8c8d"}
        if features is not None and model.manifest.feature(names[j]).type != "categorical":
            raw = pd.to_numeric(features[names[j]].loc[rows], errors="coerce").astype(float).to_numpy()
            style = {"c": pd.Series(raw).rank(pct=True).fillna(0.5).to_numpy(), "cmap": "coolwarm", "vmin": 0,
                     "vmax": 1}
        ax.scatter(values[shown, j], y, s=5, alpha=0.6, linewidths=0, **style)
    ax.axvline(0, color="#555", linewidth=0.8)
    ax.set_yticks(range(len(order))[::-1], labels)
    ax.set_xlabel("SHAP contribution (colour: value percentile, blue low, red high; grey: category)")
    section.images.append(_png(fig, "beeswarm of SHAP contributions"))
    return section, top


def permutation_bars(explainer: Any) -> tuple[list[Any], list[float] | None]:
    """The top features of a PermutationExplainer's global ranking, and the half-widths of the 95%
    confidence intervals of their mean importance (None with a single repeat)."""
    from scipy.stats import t as student_t

    ranks = explainer.global_ranking()[:TOP_FEATURES]
    repeats = explainer.n_repeats
    if repeats < 2:
        return ranks, None
    # importance_std is scikit-learn's std over the repeats (ddof=0): the mean's standard error is std / sqrt(n - 1).
    return ranks, [float(student_t.ppf(0.975, repeats - 1) * r.importance_std / np.sqrt(repeats - 1)) for r in ranks]


def _permutation(model: LoadedModel) -> Section:
    """The model's global ranking, as measured at registration (every run of the model shows the same)."""
    from risklens.explainers.permutation import PermutationExplainer

    section = Section("permutation", "Permutation importance")
    if not PermutationExplainer.supports(model):
        section.unavailable = "the model was registered without permutation importance (no labelled hold-out)"
        return section
    explainer = PermutationExplainer(model)
    ranks, half_width = permutation_bars(explainer)
    repeats = explainer.n_repeats
    section.intro = (f"Fall in the model's {explainer.scoring} when one feature is shuffled, measured at registration "
                     f"on {explainer.holdout_rows:,} held-out labelled claims, each feature shuffled {repeats} times: "
                     f"bars show the mean of the {repeats} falls"
                     + (", whiskers its 95% confidence interval (Student's t)." if repeats > 1 else "."))
    fig, ax = _figure(7.5, 0.32 * len(ranks) + 1.0)
    positions = range(len(ranks))[::-1]
    ax.barh(positions, [r.importance_mean for r in ranks], xerr=half_width, color="#8e44ad", ecolor="#333",
            capsize=3)
    ax.axvline(0, color="#555", linewidth=0.8)
    ax.set_yticks(positions, [model.manifest.feature(r.feature).display_name for r in ranks])
    ax.set_xlabel(f"fall in {explainer.scoring} when shuffled")
    section.images.append(_png(fig, "permutation importance with 95% intervals"))
    return section


def _ice(claims: pd.DataFrame, top: list[str], model: LoadedModel) -> Section:
    section = Section("pdp-ice", "Partial dependence and ICE for the top features",
                      intro="Thick line: partial dependence, the model's mean score over its background sample "
                            "(computed at registration) as the feature varies. Thin lines (ICE): how one "
                            "claim's score moves as the feature varies, for the sampled claims that have this "
                            "feature among their own top reasons by |SHAP| (each claim's ICE covers those), "
                            "so they need not centre on the thick line; each panel says how many.")
    if not len(claims):
        section.unavailable = "no explained claims"
        return section
    messages = _messages(claims, "ice", pb.IceResult)
    curves: dict[str, list[Any]] = {}
    for message in messages:
        for curve in message.features:
            curves.setdefault(curve.feature, []).append(curve)
    shown = [f for f in top if f in curves][:4]
    if not shown:
        section.unavailable = ("the run has no ICE results: the model was registered without PDP grids, "
                               "or the run excluded the method")
        return section
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), dpi=100, squeeze=False)
    for ax, feature in zip(axes[0], shown):
        first = curves[feature][0]
        x = np.asarray(first.grid) if len(first.grid) else np.arange(len(first.grid_labels))
        for curve in curves[feature][:ICE_CURVES]:
            if len(curve.ice) == len(x):
                ax.plot(x, curve.ice, color="#2e86c1", alpha=0.12, linewidth=0.8)
        ax.plot(x, first.pdp, color="#c0392b", linewidth=2.5, label="PDP")
        if not len(first.grid):
            ax.set_xticks(x, first.grid_labels, rotation=45, ha="right", fontsize=7)
        drawn = min(len(curves[feature]), ICE_CURVES)
        ax.set_title(f"{model.manifest.feature(feature).display_name}\n"
                     f"ICE of {drawn} of {len(messages)} sampled claims", fontsize=9)
        ax.set_ylabel("score")
        ax.spines[["top", "right"]].set_visible(False)
    section.images.append(_png(fig, "PDP and ICE curves"))
    return section


def _ebm(claims: pd.DataFrame, top: list[str], features: pd.DataFrame | None, model: LoadedModel) -> Section:
    section = Section("ebm", "EBM shape functions",
                      intro="The feature's term in the explainable boosting machine (logit scale) for the "
                            "sampled claims: one point per claim for a number, the mean term of the claims "
                            "in each category for a category.")
    if not len(claims):
        section.unavailable = "no explained claims"
        return section
    messages = _messages(claims, "ebm", pb.EbmResult)
    if not messages:
        section.unavailable = ("the run has no EBM results: the model is not an EBM and was registered "
                               "without an EBM surrogate, or the run excluded the method")
        return section
    if features is None:
        section.unavailable = "the claims table is not readable any more, so the terms cannot be placed on its values"
        return section
    first = messages[0]
    kind = "a distilled surrogate of the model" if first.surrogate else "the model itself (native EBM)"
    section.facts = [("EBM", kind), ("Fidelity R²", f"{first.fidelity_r2:.3f}"),
                     ("Decision agreement with the model", f"{first.fidelity_agreement:.1%}")]
    rows = claims.loc[claims["ebm_result"].notna(), "row"].to_numpy()
    shown = [f for f in top if f"ebm{CONTRIBUTION_SEPARATOR}{f}" in claims][:4]
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.0), dpi=100, squeeze=False)
    for ax, feature in zip(axes[0], shown):
        terms = claims.loc[claims["ebm_result"].notna(), f"ebm{CONTRIBUTION_SEPARATOR}{feature}"].to_numpy()
        values = features.loc[rows, feature]
        if model.manifest.feature(feature).type == "numeric":
            ax.scatter(pd.to_numeric(values, errors="coerce"), terms, s=8, color="#16a085")
        else:
            frame = pd.DataFrame({"value": values.astype(str).to_numpy(), "term": terms})
            means = frame.groupby("value")["term"].mean().sort_values()
            ax.bar(range(len(means)), means.to_numpy(), color="#16a085")
            ax.set_xticks(range(len(means)), means.index, rotation=45, ha="right", fontsize=7)
        ax.axhline(0, color="#555", linewidth=0.8)
        ax.set_ylabel("term (logit)" if ax is axes[0][0] else "")
        ax.set_title(model.manifest.feature(feature).display_name, fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    section.images.append(_png(fig, "EBM shape functions"))
    return section


def _reason_codes(claims: pd.DataFrame) -> Section:
    section = Section("reason-codes", "Reason-code frequency",
                      intro="How often each reason code is given, for referred and passed claims.")
    if not len(claims):
        section.unavailable = "no explained claims"
        return section
    counts = {d: Counter(code for codes in claims.loc[claims["decision"] == d, "reason_codes"] for code in codes)
              for d in ("refer", "pass")}
    codes = [c for c, _ in (counts["refer"] + counts["pass"]).most_common(15)]
    if not codes:
        section.unavailable = "no reason codes were given (the model's catalogue is empty)"
        return section
    fig, ax = _figure(7.5, 0.3 * len(codes) + 1.2)
    y = np.arange(len(codes))[::-1]
    ax.barh(y + 0.2, [counts["refer"][c] for c in codes], height=0.4, color=PALETTE["refer"], label="refer")
    ax.barh(y - 0.2, [counts["pass"][c] for c in codes], height=0.4, color=PALETTE["pass"], label="pass")
    ax.set_yticks(y, codes)
    ax.set_xlabel("claims")
    ax.legend(frameon=False)
    section.images.append(_png(fig, "reason code frequency"))
    return section


def _scores(claims: pd.DataFrame, model: LoadedModel) -> Section:
    section = Section("scores", "Score distribution by decision")
    if not len(claims):
        section.unavailable = "no explained claims"
        return section
    fig, ax = _figure()
    bins = np.linspace(0, 1, 41) if model.output_space != "raw" else 40
    for decision in ("pass", "refer"):
        ax.hist(claims.loc[claims["decision"] == decision, "score"], bins=bins, color=PALETTE[decision],
                alpha=0.75, label=decision)
    ax.axvline(model.manifest.threshold, color="#333", linestyle="--", linewidth=1, label="threshold")
    ax.set_yscale("log")
    ax.set_xlabel("score")
    ax.set_ylabel("claims (log scale)")
    ax.legend(frameon=False)
    section.images.append(_png(fig, "score histogram by decision"))
    return section


def _stability(claims: pd.DataFrame) -> Section:
    section = Section("stability", "Explanation stability and cross-method agreement",
                      intro="LIME stability: rank agreement of the top features across reruns with other "
                            "seeds (1 = identical). Agreement: mean top-k rank agreement per pair of methods.")
    if not len(claims):
        section.unavailable = "no explained claims"
        return section
    lime = claims["lime_stability"].dropna() if "lime_stability" in claims else pd.Series(dtype=float)
    agreements = _messages(claims, "agreement", pb.AgreementResult)
    if not len(lime) and not agreements:
        section.unavailable = "the run has no LIME or agreement results (the run excluded those methods)"
        return section
    import matplotlib.pyplot as plt

    panels = int(bool(len(lime))) + int(bool(agreements))
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), dpi=100, squeeze=False)
    axes = list(axes[0])
    if len(lime):
        ax = axes.pop(0)
        ax.hist(lime, bins=np.linspace(0, 1, 21), color="#2e86c1")
        ax.set_xlabel("LIME stability across seeds")
        ax.set_ylabel("claims")
        section.facts.append(("Median LIME stability", f"{lime.median():.2f}"))
    if agreements:
        ax = axes.pop(0)
        pairs: dict[tuple[str, str], list[float]] = {}
        for message in agreements:
            for pair in message.pairs:
                pairs.setdefault((pair.method_a, pair.method_b), []).append(pair.agreement)
        methods = sorted({m for pair in pairs for m in pair})
        matrix = np.eye(len(methods))
        for (a, b), values in pairs.items():
            i, j = methods.index(a), methods.index(b)
            matrix[i, j] = matrix[j, i] = float(np.mean(values))
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        ax.set_yticks(range(len(methods)), methods)
        for i in range(len(methods)):
            for j in range(len(methods)):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                        color="white" if matrix[i, j] < 0.6 else "black", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title("mean top-k agreement", fontsize=9)
        share = np.mean([m.disagree for m in agreements])
        section.facts.append(("Claims where methods disagree", f"{share:.1%} of {len(agreements)} sampled"))
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
    section.images.append(_png(fig, "explanation stability and agreement"))
    return section


def _faithfulness(claims: pd.DataFrame, names: list[str], table: ClaimsTable | None, model: LoadedModel,
                  top_k: int) -> Section:
    section = Section("faithfulness", "Faithfulness: deletion and insertion curves",
                      intro="Remove each method's top-k risk-raising features (set them to a neutral "
                            "background value) and watch the score fall; insert them into a neutral claim "
                            "and watch it rise. Steeper is more faithful; the random order is the baseline. "
                            "Average drop: mean relative fall after deleting the top-k; average increase: "
                            "share of claims whose score rises when only the top-k are kept.")
    if not len(claims):
        section.unavailable = "no explained claims"
        return section
    if table is None:
        section.unavailable = "the claims table is not readable any more, so features cannot be removed"
        return section
    methods = [m for m in ("shap", "lime", "ebm") if _contributions(claims, m, names) is not None]
    with_all = claims
    for method in methods[1:]:
        with_all = with_all[with_all[f"{method}_result"].notna()]
    if len(with_all) < 10:  # too few sampled claims carry the other methods: compare SHAP alone
        methods, with_all = ["shap"], claims
    chosen = with_all.sample(min(FAITHFULNESS_ROWS, len(with_all)), random_state=0).sort_values("row")
    frame = claims_frame(model.manifest, [validate_claim(model.manifest, c) for c in
                                          _claims_at(table, chosen["row"].to_numpy())])
    attributions = {m: _contributions(chosen, m, names) for m in methods}
    curves = faithfulness_curves(model, frame, attributions, top_k=top_k)
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    colours = {"shap": "#c0392b", "lime": "#2e86c1", "ebm": "#16a085", "random": "#7f8c8d"}
    for curve in curves:
        style = "--" if curve.method == "random" else "-"
        left.plot(curve.steps, curve.deletion, style, color=colours[curve.method], label=curve.method, marker="o",
                  markersize=3)
        right.plot(curve.steps, curve.insertion, style, color=colours[curve.method], label=curve.method,
                   marker="o", markersize=3)
    left.set_title("deletion (lower is better)", fontsize=9)
    right.set_title("insertion (higher is better)", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("top-k features")
        ax.set_ylabel("mean score")
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(frameon=False, fontsize=8)
    section.images.append(_png(fig, "deletion and insertion curves"))
    section.table = {"columns": ["method", "deletion AUC", "insertion AUC", f"average drop (top {top_k})",
                                 f"average increase (top {top_k})"],
                     "rows": [[c.method, f"{c.deletion_area:.4f}", f"{c.insertion_area:.4f}",
                               f"{c.average_drop:.1%}", f"{c.average_increase:.1%}"] for c in curves]}
    section.facts.append(("Claims evaluated", f"{len(chosen)}"))
    return section


def _claims_at(table: ClaimsTable, rows: np.ndarray) -> list[dict[str, Any]]:
    from risklens.registry import frame_to_claims

    return frame_to_claims(table.features.loc[rows])


def _flagged(claims: pd.DataFrame, model: LoadedModel) -> tuple[Section, pd.DataFrame]:
    """The section, and every flagged claim (most urgent first) for the flagged-claims file."""
    sampled = int(claims["agreement_disagree"].notna().sum()) if "agreement_disagree" in claims else 0
    section = Section("flagged", "Cases flagged for human review",
                      intro="Claims whose score sits within 0.02 of the decision threshold (the decision could "
                            "flip on a small change), checked for every claim; and claims where the explanation "
                            f"methods disagree, which is known only for the {sampled:,} sampled claims that "
                            "got the other methods.")
    if not len(claims):
        section.unavailable = "no explained claims"
        return section, pd.DataFrame(columns=FLAGGED_COLUMNS)
    reasons = pd.Series("", index=claims.index)
    near = (claims["score"] - model.manifest.threshold).abs() < 0.02
    reasons[near] = "near threshold"
    if "agreement_disagree" in claims:
        disagree = claims["agreement_disagree"].fillna(False).astype(bool)
        reasons[disagree] = np.where(near[disagree], "methods disagree; near threshold", "methods disagree")
    flagged = claims[reasons != ""].assign(why=reasons[reasons != ""])
    # Disagreement first (the explanation itself is in doubt), then the closest calls.
    flagged = flagged.assign(_disagree=flagged["why"].str.startswith("methods"),
                             _distance=(flagged["score"] - model.manifest.threshold).abs())
    flagged = flagged.sort_values(["_disagree", "_distance"], ascending=[False, True])
    disagreeing = int(flagged["_disagree"].sum())
    section.facts = [("Flagged", f"{len(flagged):,} of {len(claims):,} claims: {len(flagged) - disagreeing:,} near "
                                 f"the threshold only, {disagreeing:,} where methods disagree (of {sampled:,} "
                                 f"checked)")]
    listed = pd.DataFrame({"claim_id": flagged["claim_id"], "score": flagged["score"], "decision": flagged["decision"],
                           "why": flagged["why"], "reason_codes": flagged["reason_codes"].map(", ".join),
                           "receipt_id": flagged["receipt_id"]})
    if not len(flagged):
        section.unavailable = "no claim met a review criterion"
        return section, listed
    section.facts.append(("Listed below", f"{min(len(flagged), FLAGGED_ROWS)} of {len(flagged):,}, disagreement "
                                          f"first, then the closest to the threshold; {FLAGGED_FILE} next to this "
                                          f"report lists them all"))
    section.table = {"columns": ["claim", "score", "decision", "why", "reason codes", "receipt"],
                     "rows": [[r.claim_id, f"{r.score:.3f}", r.decision, r.why, r.reason_codes, r.receipt_id]
                              for r in listed.head(FLAGGED_ROWS).itertuples()]}
    return section, listed


def _reproducibility(run: dict, claims: pd.DataFrame) -> Section:
    identity, summary = run["identity"], run["summary"]
    head = summary.get("chain_head")
    section = Section("reproducibility", "Reproducibility",
                      intro="Rerunning with these settings, this model file and this data file reproduces the "
                            "explanations: each claim's seed for the randomised methods follows from the run's "
                            "seed and the claim's row, and is stored with the claim and its receipt.")
    columns = [f"{m}_result" for m in identity["methods"] if f"{m}_result" in claims]
    got_methods = int(claims[columns].notna().any(axis=1).sum()) if columns else 0
    drawn = summary.get("sampled_rows", 0)
    section.facts = [
        ("Methods on the sample", ", ".join(identity["methods"]) or "SHAP only"),
        ("Sample", f"{got_methods:,} explained claims (run seed {identity['seed']})"
                   + (f"; {drawn - got_methods:,} more drawn rows were rejected" if drawn > got_methods else "")),
        ("Chunk size", str(identity["chunk_size"])),
        ("Scheduler", f"{run.get('scheduler', '')} ({run.get('workers', '')} worker(s))"),
        ("Settings", ", ".join(f"{k}={v}" for k, v in identity["settings"].items())),
        ("Audit chain head", f"sequence {head['sequence']}, hash {head['hash']}" if head else "audit not recorded"),
        ("Library versions", ", ".join(f"{k} {v}" for k, v in run.get("library_versions", {}).items())),
        ("Started", run.get("created_at", "")), ("Finished", summary.get("finished_at", "")),
        ("Ignored table columns", ", ".join(run.get("ignored_columns", [])) or "none"),
    ]
    return section


# ------------------------------------------------------------------------------------------ build


def build_report(out: Path, *, registry_dir: Path | None = None, table: ClaimsTable | None = None,
                 pdf: bool = False) -> Path:
    """Write ``out/report.html`` for the finished run in ``out``; returns its path.

    ``pdf=True`` also prints ``report.pdf`` when a headless Chromium is installed.
    """
    import jinja2

    out = Path(out)
    run = run_summary(out)
    identity = run["identity"]
    registry = ModelRegistry.from_directory(Path(registry_dir or run["models_dir"]))
    model = registry.get(identity["model"], identity["version"])
    if model.manifest.sha256 != identity["model_sha256"]:
        raise InvalidRequest(f"model {model.name} v{model.version} changed since the run (sha256 differs)")
    claims = pd.read_parquet(out / CLAIMS_FILE)
    names = model.manifest.feature_names
    if table is None and Path(identity["data"]).is_file():
        table = read_claims_table(Path(identity["data"]), model.manifest, id_column=identity["id_column"],
                                  label_column=identity["label_column"])
    features = table.features if table is not None else None
    top_k = int(identity["settings"]["top_k"])
    shap_section, top = _shap_sections(claims, names, features, model)
    flagged_section, flagged = _flagged(claims, model)
    sections = [
        _model_card(model, run, claims), shap_section, _permutation(model), _ice(claims, top, model),
        _ebm(claims, top, features, model), _reason_codes(claims), _scores(claims, model), _stability(claims),
        _faithfulness(claims, names, table, model, top_k), flagged_section, _reproducibility(run, claims),
    ]
    flagged.to_csv(out / FLAGGED_FILE, index=False)
    directory = templates_dir()
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(directory), autoescape=True)
    html = environment.get_template("report.html.j2").render(
        title=f"Audit report: {model.name} v{model.version}", model=model.manifest, sections=sections,
        css=(directory / "report.css").read_text(), generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        explained=len(claims))
    path = out / REPORT_FILE
    path.write_text(html, encoding="utf-8")
    log.info("report written to %s", path)
    if pdf:
        print_pdf(path)
    return path


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def headless_flags(profile: Path) -> list[str]:
    """Flags for a quiet, isolated headless Chromium (no network chatter, a fresh profile)."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}"]


def print_pdf(html: Path) -> Path | None:
    """report.pdf next to ``html`` via headless Chromium; None (and a log line) when there is none."""
    binary = chromium_binary()
    if binary is None:
        log.info("no Chromium found: skipping the PDF version of the report")
        return None
    target = html.with_suffix(".pdf")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([binary, *headless_flags(Path(profile)), "--no-pdf-header-footer",
                        f"--print-to-pdf={target}", html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return target if target.exists() else None
