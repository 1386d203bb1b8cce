"""The templated rationale: deterministic text rendered from the score and the selected reason codes."""

from __future__ import annotations

from functools import lru_cache

import jinja2

from risklens.rationale.catalogue import ReasonCode, render_template

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("risklens.rationale", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    auto_reload=False,  # packaged templates do not change under a running process
)


@lru_cache(maxsize=65_536)  # code texts repeat across claims
def _sentence_case(text: str) -> str:
    """Lower-case the first letter so a code text reads inside a sentence, unless it starts an acronym."""
    first_word = text.split(" ", 1)[0]
    return text if len(first_word) > 1 and first_word.isupper() else text[:1].lower() + text[1:]


def render_rationale(*, model_label: str, score: float, threshold: float, decision: str,
                     reason_codes: list[ReasonCode], agreement_summary: str = "") -> str:
    # The text depends on the score only to two decimals: claims that share it and their reasons
    # share one rendering (reason texts repeat a lot across a claims table).
    return _render(model_label, f"{score:.2f}", f"{threshold:.2f}", decision,
                   tuple((c.direction, c.text) for c in reason_codes), agreement_summary)


@lru_cache(maxsize=65_536)
def _render(model_label: str, score_text: str, threshold_text: str, decision: str,
            reasons: tuple[tuple[str, str], ...], agreement_summary: str) -> str:
    raises = [_sentence_case(text) for direction, text in reasons if direction == "raises"]
    lowers = [_sentence_case(text) for direction, text in reasons if direction == "lowers"]
    return render_template(_TEMPLATES.get_template("rationale.j2"), dict(
        model_label=model_label, score=score_text, threshold=threshold_text, decision=decision,
        raises=raises, lowers=lowers, agreement_summary=agreement_summary)).strip()
