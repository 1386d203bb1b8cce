"""Reason codes and the templated natural-language rationale (no free-form generation)."""

from risklens.rationale.catalogue import Catalogue, CodeSpec, ReasonCode, format_value, load_catalogue, select_reason_codes
from risklens.rationale.render import render_rationale

__all__ = [
    "Catalogue",
    "CodeSpec",
    "ReasonCode",
    "format_value",
    "load_catalogue",
    "render_rationale",
    "select_reason_codes",
]
