"""Reason codes and the templated natural-language rationale (no free-form generation)."""

from risklens.rationale.catalogue import (
    WITHHELD,
    Catalogue,
    CodeSpec,
    ReasonCode,
    ReasonCodeSelector,
    format_value,
    load_catalogue,
    render_template,
)
from risklens.rationale.render import render_rationale

__all__ = [
    "WITHHELD",
    "Catalogue",
    "CodeSpec",
    "ReasonCode",
    "format_value",
    "load_catalogue",
    "ReasonCodeSelector",
    "render_rationale",
    "render_template",
]
