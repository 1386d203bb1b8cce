"""The one explainer protocol every method implements (one module per method in this package)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd

from risklens.registry import LoadedModel


@dataclass
class ExplainContext:
    """Per-call options and the results of methods that already ran (SHAP always runs first)."""

    top_k: int
    device: str
    seeds: list[int]  # one per row
    lime_samples: int = 0
    agreement_threshold: float = 0.5
    results: dict[str, list[Any]] = field(default_factory=dict)


class Explainer(ABC):
    """One explanation method for one loaded model. Built once per model and reused across calls."""

    name: ClassVar[str]
    # Methods whose results this one reads from ``ExplainContext.results`` (run before it when supported).
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    @classmethod
    def supports(cls, model: LoadedModel) -> bool:
        """Whether this method can explain ``model`` at all."""
        return True

    @abstractmethod
    def explain(self, frame: pd.DataFrame, context: ExplainContext) -> list[Any]:
        """One result per row of ``frame`` (validated raw features in schema order)."""
