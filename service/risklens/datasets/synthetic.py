"""Deterministic synthetic insurance claims with fraud planted by known, documented rules.

Fraud is drawn from a logistic model whose log-odds are a base rate plus the effects of the
rules in ``PLANTED_RULES`` (and a little noise): tests check that explanations find them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

PRICE_BANDS = ["under 20k", "20k to 30k", "30k to 40k", "40k to 60k", "over 60k"]
PRICE_BAND_VALUE = np.array([15_000, 25_000, 35_000, 50_000, 75_000], dtype=float)
POLICY_TYPES = ["liability", "collision", "all_perils"]
ACCIDENT_AREAS = ["urban", "rural"]
FAULTS = ["policy_holder", "third_party"]
BASE_LOG_ODDS = -3.6


@dataclass(frozen=True)
class PlantedRule:
    name: str
    features: tuple[str, ...]
    log_odds: float
    description: str
    applies: Callable[[pd.DataFrame], np.ndarray]


PLANTED_RULES: tuple[PlantedRule, ...] = (
    PlantedRule("early_claim", ("days_policy_to_claim",), 2.2,
                "claim filed within 30 days of the policy start",
                lambda d: (d["days_policy_to_claim"] < 30).to_numpy()),
    PlantedRule("no_corroboration", ("police_report_filed", "witness_present"), 1.3,
                "no police report and no witness",
                lambda d: (~d["police_report_filed"] & ~d["witness_present"]).to_numpy()),
    PlantedRule("repeat_claimant", ("past_claims",), 1.6,
                "three or more past claims",
                lambda d: (d["past_claims"] >= 3).to_numpy()),
    PlantedRule("claim_exceeds_vehicle", ("claim_amount", "vehicle_price_band"), 1.9,
                "claim amount above 80% of the vehicle's price band",
                lambda d: (d["claim_amount"].to_numpy()
                           > 0.8 * PRICE_BAND_VALUE[d["vehicle_price_band"].map(PRICE_BANDS.index).to_numpy()])),
    PlantedRule("recent_address_change", ("address_change_recent",), 0.9,
                "address changed shortly before the claim",
                lambda d: d["address_change_recent"].to_numpy()),
    PlantedRule("third_party_fault", ("fault",), -1.1,
                "a third party was at fault (lowers risk)",
                lambda d: (d["fault"] == "third_party").to_numpy()),
)


def fraud_log_odds(claims: pd.DataFrame) -> np.ndarray:
    """The generator's true log-odds of fraud (without noise)."""
    logit = np.full(len(claims), BASE_LOG_ODDS)
    for rule in PLANTED_RULES:
        logit += rule.log_odds * rule.applies(claims)
    return logit


def generate_claims(n: int = 5_000, seed: int = 7) -> tuple[pd.DataFrame, pd.Series]:
    """``n`` synthetic claims and their 0/1 fraud labels; the same ``seed`` gives the same table."""
    rng = np.random.default_rng(seed)
    band = rng.choice(len(PRICE_BANDS), size=n, p=[0.3, 0.3, 0.2, 0.15, 0.05])
    tenure_months = rng.gamma(2.0, 18.0, size=n).round(0)
    early = rng.random(n) < 0.08
    days_to_claim = np.where(early, rng.integers(1, 30, size=n),
                             rng.integers(30, 3650, size=n)).astype(float)
    claim_amount = np.exp(rng.normal(8.4, 0.9, size=n)).round(2)
    claim_amount = np.where(rng.random(n) < 0.06, PRICE_BAND_VALUE[band] * rng.uniform(0.85, 1.1, size=n),
                            claim_amount).round(2)
    driver_rating = rng.integers(1, 5, size=n).astype(float)
    driver_rating[rng.random(n) < 0.05] = np.nan  # not always recorded
    claims = pd.DataFrame({
        "claim_amount": claim_amount,
        "policy_tenure_months": tenure_months,
        "days_policy_to_claim": days_to_claim,
        "vehicle_age_years": rng.integers(0, 21, size=n).astype(float),
        "vehicle_price_band": pd.Series(np.array(PRICE_BANDS)[band], dtype="str"),
        "accident_area": pd.Series(rng.choice(ACCIDENT_AREAS, size=n, p=[0.8, 0.2]), dtype="str"),
        "fault": pd.Series(rng.choice(FAULTS, size=n, p=[0.7, 0.3]), dtype="str"),
        "policy_type": pd.Series(rng.choice(POLICY_TYPES, size=n), dtype="str"),
        "witness_present": rng.random(n) < 0.35,
        "police_report_filed": rng.random(n) < 0.55,
        "address_change_recent": rng.random(n) < 0.07,
        "past_claims": rng.poisson(0.8, size=n).astype(float),
        "claimant_age": rng.integers(18, 86, size=n).astype(float),
        "deductible": rng.choice([300.0, 400.0, 500.0, 700.0], size=n),
        "driver_rating": driver_rating,
    })
    logit = fraud_log_odds(claims) + rng.normal(0.0, 0.3, size=n)
    fraud = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return claims, pd.Series(fraud, name="fraud")
