"""Per-model reason-code catalogue (``reason_codes.yaml`` in the model directory) and code selection."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

from risklens.errors import ManifestError
from risklens.registry import LoadedModel, Manifest

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


@lru_cache(maxsize=4096)
def _compiled(template: str) -> jinja2.Template:
    """Reason texts are few and reused on every call: compile each once."""
    return _ENV.from_string(template)


class CodeSpec(BaseModel):
    """One reason code: the features it groups and the reviewer text for each direction (Jinja2)."""

    code: str
    features: list[str] = Field(min_length=1)
    raises: str
    lowers: str


class Catalogue(BaseModel):
    codes: list[CodeSpec] = Field(default_factory=list)

    @classmethod
    def read(cls, path: Path, manifest: Manifest) -> "Catalogue":
        try:
            catalogue = cls.model_validate(yaml.safe_load(path.read_text()) or {})
        except (OSError, ValidationError, yaml.YAMLError) as exc:
            raise ManifestError(f"invalid reason-code catalogue {path}: {exc}") from exc
        known = set(manifest.feature_names)
        for spec in catalogue.codes:
            unknown = [f for f in spec.features if f not in known]
            if unknown:
                raise ManifestError(f"reason code {spec.code} in {path} names unknown features {unknown}")
        return catalogue.completed(manifest)

    def completed(self, manifest: Manifest) -> "Catalogue":
        """Every feature not grouped by a code gets a generic one, so no contribution goes unexplained.

        Generic texts read the value as ``claim["<name>"]``, which works for any feature name
        (hand-written templates may use the shorter ``{{ name }}`` when the name is an identifier).
        """
        covered = {f for spec in self.codes for f in spec.features}
        generic = [
            CodeSpec(code=f"RL_{spec.name.upper()}", features=[spec.name],
                     raises=f"{spec.display_name} ({{{{ claim[{spec.name!r}] }}}}) raised the risk",
                     lowers=f"{spec.display_name} ({{{{ claim[{spec.name!r}] }}}}) lowered the risk")
            for spec in manifest.features if spec.name not in covered
        ]
        return Catalogue(codes=[*self.codes, *generic])


@dataclass(frozen=True)
class ReasonCode:
    code: str
    text: str
    direction: str  # "raises" | "lowers"
    weight: float
    features: tuple[str, ...]


def format_value(value: Any) -> str:
    """A claim value in reviewer-friendly words (never used in logs)."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.2f}"
    return str(value)


def render_template(template: jinja2.Template, values: dict[str, Any]) -> str:
    """Render with ``values`` as the whole context (no globals merged in): the per-claim hot path."""
    return "".join(template.root_render_func(template.new_context(values, shared=True)))


class ReasonCodeSelector:
    """Picks and words a claim's reason codes; built once per model, used for every claim."""

    def __init__(self, catalogue: Catalogue, manifest: Manifest) -> None:
        index = {name: i for i, name in enumerate(manifest.feature_names)}
        self._specs = catalogue.codes
        # (n_features, n_codes): a code's weight is the sum of its features' contributions.
        self._membership = np.zeros((len(index), len(self._specs)))
        for c, spec in enumerate(self._specs):
            self._membership[[index[f] for f in spec.features], c] = 1.0
        self._templates = {"raises": [_compiled(spec.raises) for spec in self._specs],
                           "lowers": [_compiled(spec.lowers) for spec in self._specs]}

    def select(self, claim: dict[str, Any], shap_values: np.ndarray, top_k: int) -> list[ReasonCode]:
        """Top ``top_k`` codes that raise the risk (largest first), then the top ``top_k`` that lower it."""
        weights = np.asarray(shap_values, dtype="float64") @ self._membership
        order = np.argsort(-weights, kind="stable")
        raising = [c for c in order[:top_k] if weights[c] > 0]
        lowering = [c for c in order[::-1][:top_k] if weights[c] < 0]
        shown = {name: format_value(value) for name, value in claim.items()}
        context = {**shown, "claim": shown}
        codes = []
        for direction, chosen in (("raises", raising), ("lowers", lowering)):
            for c in chosen:
                spec = self._specs[c]
                text = render_template(self._templates[direction][c], context)
                codes.append(ReasonCode(spec.code, text, direction, float(weights[c]), tuple(spec.features)))
        return codes


def load_catalogue(model: LoadedModel) -> Catalogue:
    return Catalogue.read(model.directory / model.manifest.reason_codes, model.manifest)
