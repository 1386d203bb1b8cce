"""Per-model reason-code catalogue (``reason_codes.yaml`` in the model directory) and code selection."""

from __future__ import annotations

import ast
import re
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
from jinja2 import meta, nodes
import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

from risklens.errors import ManifestError
from risklens.registry import LoadedModel, Manifest
from risklens.registry.manifest import load_yaml

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
# Shown in place of a value an audit trail's policy hashes or drops (reason texts, LIME conditions).
WITHHELD = "[redacted]"
_MAX_CACHED_TEXTS = 100_000  # per model: bounded, since numeric values may never repeat


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
            catalogue = cls.model_validate(load_yaml(path.read_text()) or {})
        except (OSError, ValidationError, yaml.YAMLError) as exc:
            raise ManifestError(f"invalid reason-code catalogue {path}: {exc}") from exc
        known = set(manifest.feature_names)
        for spec in catalogue.codes:
            unknown = [f for f in spec.features if f not in known]
            if unknown:
                raise ManifestError(f"reason code {spec.code} in {path} names unknown features {unknown}")
        completed = catalogue.completed(manifest)
        names = [spec.code for spec in completed.codes]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # a receipt or notice that names a code must name one text
            raise ManifestError(f"reason code(s) {repeated} in {path} are defined twice (generated codes are named "
                                f"RL_<FEATURE> for features no code groups)")
        return completed

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


class ReasonCode(NamedTuple):
    """One selected reason code (a tuple: cheap to build for every code of every claim)."""

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


def _template_features(template: str, feature_names: list[str]) -> tuple[str, ...]:
    """The features a code text reads (``{{ name }}`` or ``claim["name"]``), so equal values can
    share one rendering; every feature when the template reads ``claim`` in any other way."""
    tree = _ENV.parse(template)
    known = set(feature_names)
    used = {name for name in meta.find_undeclared_variables(tree) if name in known}
    claim_uses = [node for node in tree.find_all(nodes.Name) if node.name == "claim"]
    lookups = [node for node in tree.find_all(nodes.Getitem)
               if isinstance(node.node, nodes.Name) and node.node.name == "claim"
               and isinstance(node.arg, nodes.Const) and node.arg.value in known]
    if len(lookups) != len(claim_uses):
        return tuple(feature_names)
    return tuple(sorted(used | {node.arg.value for node in lookups}))


# "{{ name }}" or "{{ claim['name'] }}" (a quoted name without backslashes)
_PRINTED_VALUE = re.compile(r"""\{\{\s*(?:([A-Za-z_]\w*)|claim\[\s*('[^'\\]*'|"[^"\\]*")\s*\])\s*\}\}""")
_JINJA_CONSTANTS = {"true", "false", "none", "True", "False", "None"}


class PlainText(NamedTuple):
    """A code text that only prints feature values between fixed texts: rendered without Jinja."""

    texts: tuple[str, ...]  # one more than ``names``: before, between and after the values
    names: tuple[str, ...]

    def render(self, values: dict[str, str]) -> str:
        parts = [self.texts[0]]
        for name, text in zip(self.names, self.texts[1:]):
            parts += (values[name], text)
        return "".join(parts)


def plain_text(template: str, feature_names: list[str]) -> PlainText | None:
    """The template as a PlainText when that renders exactly what Jinja would, else None.

    Compiling a Jinja template costs ~1.5 ms and most code texts (every generic one) only print a
    value: a model's catalogue took 0.16 s to build in every process. Anything else, including
    whitespace control, filters, a newline (Jinja drops a trailing one) or a name that is not a
    feature (an error at rendering), is left to Jinja.
    """
    known = set(feature_names) - _JINJA_CONSTANTS
    texts, names, end = [], [], 0
    for match in _PRINTED_VALUE.finditer(template):
        name = match.group(1) if match.group(1) is not None else ast.literal_eval(match.group(2))
        if name not in known:
            return None
        texts.append(template[end:match.start()])
        names.append(name)
        end = match.end()
    texts.append(template[end:])
    if any(char in text for text in texts for char in "{}\n\r"):
        return None
    return PlainText(tuple(texts), tuple(names))


class ReasonCodeSelector:
    """Picks and words claims' reason codes; built once per model, used for every claim."""

    def __init__(self, catalogue: Catalogue, manifest: Manifest) -> None:
        names = manifest.feature_names
        index = {name: i for i, name in enumerate(names)}
        self._specs = catalogue.codes
        self._code_columns = [[index[f] for f in spec.features] for spec in self._specs]
        self._code_names = np.array([spec.code for spec in self._specs], dtype=object)
        self._code_index = {spec.code: c for c, spec in enumerate(self._specs)}
        self._code_features = np.empty(len(self._specs), dtype=object)  # tuples kept whole, not as rows
        for c, spec in enumerate(self._specs):
            self._code_features[c] = tuple(spec.features)
        self._templates: dict[str, list[PlainText | jinja2.Template]] = {"raises": [], "lowers": []}
        self._reads: dict[str, list[tuple[str, ...]]] = {"raises": [], "lowers": []}
        for spec in self._specs:
            for direction in ("raises", "lowers"):
                text = getattr(spec, direction)
                plain = plain_text(text, names)
                self._templates[direction].append(plain or _compiled(text))
                self._reads[direction].append(tuple(sorted(set(plain.names))) if plain is not None
                                              else _template_features(text, names))
        # Renderings by (direction, code, shown values of the features the text reads).
        self._texts: dict[tuple[str, int, tuple[str, ...]], str] = {}

    def weights(self, shap_values: np.ndarray) -> np.ndarray:
        """(n_claims, n_codes): a code's weight is the sum of its features' contributions.

        Summed feature by feature, in a fixed order, so a claim's weights are the same bits
        whether it is explained alone or in a table.
        """
        values = np.atleast_2d(np.asarray(shap_values, dtype="float64"))
        weights = np.empty((len(values), len(self._specs)))
        for c, columns in enumerate(self._code_columns):
            weights[:, c] = values[:, columns[0]]
            for column in columns[1:]:
                weights[:, c] += values[:, column]
        return weights

    def select(self, claim: dict[str, Any], shap_values: np.ndarray, top_k: int) -> list[ReasonCode]:
        """Top ``top_k`` codes that raise the risk (largest first), then the top ``top_k`` that lower it."""
        return self.select_rows([claim], np.atleast_2d(shap_values), top_k)[0]

    def select_rows(self, claims: list[dict[str, Any]], shap_values: np.ndarray, top_k: int) -> list[list[ReasonCode]]:
        """``select`` for each claim (row of ``shap_values``), with the weights, ordering and picking done
        on arrays for all claims at once; in plain Python for a few claims, where NumPy's per-call cost
        dominates (one claim: ~40 us against ~100 on arrays). Both give the same codes, bit for bit."""
        if len(claims) < _ARRAY_ROWS:
            return [self._select_one(claim, row, top_k) for claim, row in zip(claims, np.asarray(shap_values).tolist())]
        weights = self.weights(shap_values)
        order = np.argsort(-weights, axis=1, kind="stable")
        k = min(top_k, len(self._specs))
        picked = np.concatenate([order[:, :k], order[:, ::-1][:, :k]], axis=1)
        picked_weights = np.take_along_axis(weights, picked, axis=1)
        kept = np.concatenate([picked_weights[:, :k] > 0, picked_weights[:, k:] < 0], axis=1)
        rows, slots = np.nonzero(kept)  # row by row: raising codes (largest first), then lowering ones
        codes = picked[rows, slots]
        lowering = slots >= k
        texts = list(map(self._text_for, map(claims.__getitem__, rows.tolist()), codes.tolist(), lowering.tolist()))
        # tuple.__new__: the NamedTuples without their Python-level constructor (one per code per claim)
        flat = list(map(partial(tuple.__new__, ReasonCode), zip(
            self._code_names[codes].tolist(), texts, _DIRECTIONS[lowering.view(np.int8)].tolist(),
            picked_weights[rows, slots].tolist(), self._code_features[codes].tolist())))
        ends = np.cumsum(kept.sum(axis=1)).tolist()
        return [flat[start:end] for start, end in zip([0, *ends], ends)]

    def _select_one(self, claim: dict[str, Any], shap_values: list[float], top_k: int) -> list[ReasonCode]:
        weights = []
        for columns in self._code_columns:  # summed in weights()' order: the same bits
            weight = shap_values[columns[0]]
            for column in columns[1:]:
                weight += shap_values[column]
            weights.append(weight)
        order = sorted(range(len(weights)), key=lambda c: -weights[c])  # stable, as argsort(kind="stable")
        picked = [(c, False) for c in order[:top_k] if weights[c] > 0]
        picked += [(c, True) for c in order[::-1][:top_k] if weights[c] < 0]
        return [tuple.__new__(ReasonCode, (self._code_names[c], self._text_for(claim, c, lowering),
                                           "lowers" if lowering else "raises", weights[c], self._code_features[c]))
                for c, lowering in picked]

    def withheld(self, claim: dict[str, Any], codes: list[ReasonCode], hidden: frozenset[str]) -> list[ReasonCode] | None:
        """``codes`` (selected for ``claim``) with every text that reads a value of a ``hidden``
        feature withheld; None when no text reads one.

        A text that only prints values is rendered with WITHHELD in place of the hidden ones. A
        template that does more with a value (a test, a filter) is withheld whole: rendered with a
        stand-in it could state something false ("Other party at fault", "0 years").
        """
        positions = [self._code_index[code.code] for code in codes]
        reads = [self._reads[code.direction][c] for code, c in zip(codes, positions)]
        if all(hidden.isdisjoint(names) for names in reads):
            return None
        withheld = []
        for code, c, names in zip(codes, positions, reads):
            if not hidden.isdisjoint(names):
                if isinstance(self._templates[code.direction][c], PlainText):
                    shown = tuple([WITHHELD if name in hidden else value if type(value) is str else format_value(value)
                                   for name, value in zip(names, map(claim.__getitem__, names))])
                    code = code._replace(text=self._text(code.direction, c, shown))
                else:
                    code = code._replace(text=WITHHELD)
            withheld.append(code)
        return withheld

    def _text_for(self, claim: dict[str, Any], c: int, lowering: bool) -> str:
        """Code ``c``'s text for ``claim``, rendered once per direction, code and shown values."""
        direction = "lowers" if lowering else "raises"
        reads = self._reads[direction][c]
        # Categories are shown as they are; other values through format_value (-0.0 shows as "-0").
        if len(reads) == 1:  # the usual code: one feature
            value = claim[reads[0]]
            shown: tuple[str, ...] = (value if type(value) is str else format_value(value),)
        else:
            shown = tuple([value if type(value) is str else format_value(value) for value in map(claim.__getitem__, reads)])
        text = self._texts.get((direction, c, shown))
        return text if text is not None else self._text(direction, c, shown)

    def _text(self, direction: str, c: int, shown: tuple[str, ...]) -> str:
        """Render code ``c``'s text (in ``direction``) with the values it reads shown as ``shown``; kept."""
        reads = self._reads[direction][c]
        values = dict(zip(reads, map(format_value, shown)))
        template = self._templates[direction][c]
        text = (template.render(values) if isinstance(template, PlainText)
                else render_template(template, {**values, "claim": values}))
        if len(self._texts) < _MAX_CACHED_TEXTS:
            self._texts[(direction, c, shown)] = text
        return text


_DIRECTIONS = np.array(["raises", "lowers"], dtype=object)
_ARRAY_ROWS = 8  # claims from which select_rows picks codes on arrays


def load_catalogue(model: LoadedModel) -> Catalogue:
    return Catalogue.read(model.directory / model.manifest.reason_codes, model.manifest)
