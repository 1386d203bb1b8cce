"""Rebuild the bundled demo models from the deterministic synthetic claims generator.

``python -m risklens.demo_models --out models`` trains an XGBoost model and a logistic-regression
pipeline on ``generate_claims(n=6000, seed=7)``, registers both through
``risklens.registry.registration.register_model`` (the step behind ``risklens models add``: model
directory, PDP grids, EBM surrogate, permutation importance on 2,000 held-out claims) and writes
example claims under ``examples/``. Same inputs, same files.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from risklens.datasets import generate_claims
from risklens.datasets.synthetic import PRICE_BANDS
from risklens.registry import FeatureSpec
from risklens.registry.registration import register_model
from risklens.registry.schema import encode_frame, frame_to_claims

log = logging.getLogger(__name__)

DEMO_SEED = 7
DEMO_ROWS = 6000
# Labelled claims the models never saw: permutation importance and the surrogate's fidelity use them.
HOLDOUT_ROWS = 2000

FEATURES = [
    FeatureSpec(name="claim_amount", type="numeric", min=0, max=10_000_000, description="Claimed amount (USD)"),
    FeatureSpec(name="policy_tenure_months", type="numeric", min=0, max=1200, description="Months the policy has run"),
    FeatureSpec(name="days_policy_to_claim", type="numeric", min=0, max=36500,
                description="Days between policy start and the claim"),
    FeatureSpec(name="vehicle_age_years", type="numeric", min=0, max=100),
    FeatureSpec(name="vehicle_price_band", type="categorical", categories=PRICE_BANDS),
    FeatureSpec(name="accident_area", type="categorical", categories=["urban", "rural"]),
    FeatureSpec(name="fault", type="categorical", categories=["policy_holder", "third_party"]),
    FeatureSpec(name="policy_type", type="categorical", categories=["liability", "collision", "all_perils"]),
    FeatureSpec(name="witness_present", type="boolean"),
    FeatureSpec(name="police_report_filed", type="boolean"),
    FeatureSpec(name="address_change_recent", type="boolean", label="recent address change"),
    FeatureSpec(name="past_claims", type="numeric", min=0, max=100),
    FeatureSpec(name="claimant_age", type="numeric", min=16, max=120),
    FeatureSpec(name="deductible", type="numeric", min=0, max=100_000),
    FeatureSpec(name="driver_rating", type="numeric", min=1, max=4, nullable=True),
]

REASON_CODES = {
    "codes": [
        {"code": "EC01", "features": ["days_policy_to_claim", "policy_tenure_months"],
         "raises": "The claim came {{ days_policy_to_claim }} days after the policy started",
         "lowers": "The policy had been in force {{ days_policy_to_claim }} days before the claim"},
        {"code": "NC02", "features": ["police_report_filed", "witness_present"],
         "raises": "Nothing corroborates the loss (police report: {{ police_report_filed }}, "
                   "witness: {{ witness_present }})",
         "lowers": "The loss is corroborated (police report: {{ police_report_filed }}, "
                   "witness: {{ witness_present }})"},
        {"code": "PC03", "features": ["past_claims"],
         "raises": "The claimant has {{ past_claims }} past claims",
         "lowers": "The claimant has few past claims ({{ past_claims }})"},
        {"code": "VA04", "features": ["claim_amount", "vehicle_price_band"],
         "raises": "The claimed {{ claim_amount }} is high for a vehicle priced {{ vehicle_price_band }}",
         "lowers": "The claimed {{ claim_amount }} is in line with a vehicle priced {{ vehicle_price_band }}"},
        {"code": "AD05", "features": ["address_change_recent"],
         "raises": "The address changed shortly before the claim",
         "lowers": "No recent address change"},
        {"code": "TP06", "features": ["fault"],
         "raises": "The policy holder was at fault",
         "lowers": "A third party was at fault"},
    ]
}

# Claim amounts, ages and ratings are kept raw; the claimant's age is stored as a keyed hash.
AUDIT_POLICY = {"default": "raw", "fields": {"claimant_age": "hmac"}, "retention_days": 3650}


def _xgboost_model(X: pd.DataFrame, y: pd.Series):
    import xgboost as xgb

    from risklens.registry.manifest import Manifest

    schema_manifest = Manifest(name="_", version="0", framework="xgboost", artifact="_", sha256="_",
                               features=FEATURES)
    matrix = encode_frame(schema_manifest, X)
    model = xgb.XGBClassifier(n_estimators=200, max_depth=4, learning_rate=0.08, subsample=0.9,
                              colsample_bytree=0.9, random_state=DEMO_SEED, n_jobs=1, tree_method="hist")
    model.fit(matrix, y.to_numpy())
    return model


def _logistic_pipeline(X: pd.DataFrame, y: pd.Series):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f.name for f in FEATURES if f.type in ("numeric", "boolean")]
    categorical = [f.name for f in FEATURES if f.type == "categorical"]
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("cat", OneHotEncoder(categories=[f.categories for f in FEATURES if f.type == "categorical"],
                              handle_unknown="error"), categorical),
    ], verbose_feature_names_out=True)
    X = X.assign(**{c: X[c].astype("float64") for c in numeric})
    pipeline = Pipeline([("pre", pre), ("model", LogisticRegression(C=1.0, max_iter=2000))])
    pipeline.fit(X, y)
    return pipeline


def build_demo_models(out: Path, examples_dir: Path) -> None:
    """Train both demo models and register them (PDP grids, EBM surrogate, permutation importance)."""
    X, y = generate_claims(DEMO_ROWS, seed=DEMO_SEED)
    holdout = generate_claims(HOLDOUT_ROWS, seed=DEMO_SEED + 2)
    common = dict(features=FEATURES, holdout=holdout, reason_codes=REASON_CODES, audit=AUDIT_POLICY,
                  seed=DEMO_SEED)
    register_model(out / "demo-xgb", _xgboost_model(X, y), X, name="demo-xgb", version="1.0.0", threshold=0.5,
                   description="Demo claims fraud model (XGBoost)", **common)
    register_model(out / "demo-logreg", _logistic_pipeline(X, y), X, name="demo-logreg", version="1.0.0",
                   threshold=0.5, description="Demo claims fraud model (logistic regression)", **common)
    examples_dir.mkdir(parents=True, exist_ok=True)
    held_out, _ = generate_claims(400, seed=DEMO_SEED + 1)
    rng = np.random.default_rng(DEMO_SEED)
    picks = {
        "early-claim-no-witness": held_out.index[(held_out.days_policy_to_claim < 30)
                                                 & ~held_out.witness_present & ~held_out.police_report_filed],
        "routine-claim": held_out.index[(held_out.days_policy_to_claim > 400) & held_out.police_report_filed
                                        & (held_out.past_claims == 0) & (held_out.fault == "third_party")],
        "repeat-claimant": held_out.index[held_out.past_claims >= 3],
    }
    for name, index in picks.items():
        row = held_out.loc[[int(rng.choice(index))]]
        claim = frame_to_claims(row)[0]
        (examples_dir / f"{name}.json").write_text(json.dumps(claim, indent=2) + "\n")
    log.info("demo models written to %s, examples to %s", out, examples_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models"), help="where model directories go")
    parser.add_argument("--examples", type=Path, default=Path("examples"), help="where example claims go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_demo_models(args.out, args.examples)


if __name__ == "__main__":
    main()
