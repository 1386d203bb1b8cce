"""The templated rationale: deterministic text rendered from the score and the selected reason codes."""

from __future__ import annotations

import jinja2

from risklens.rationale.catalogue import ReasonCode, render_template

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("risklens.rationale", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    auto_reload=False,  # packaged templates do not change under a running process
)


def _sentence_case(text: str) -> str:
    """Lower-case the first letter so a code text reads inside a sentence, unless it starts an acronym."""
    first_word = text.split(" ", 1)[0]
    return text if len(first_word) > 1 and first_word.isupper() else text[:1].lower() + text[1:]


def render_rationale(*, model_label: str, score: float, threshold: float, decision: str,
                     reason_codes: list[ReasonCode], agreement_summary: str = "") -> str:
    raises = [_sentence_case(c.text) for c in reason_codes if c.direction == "raises"]
    lowers = [_sentence_case(c.text) for c in reason_codes if c.direction == "lowers"]
    return render_template(_TEMPLATES.get_template("rationale.j2"), dict(
        model_label=model_label, score=score, threshold=threshold, decision=decision,
        raises=raises, lowers=lowers, agreement_summary=agreement_summary)).strip()
