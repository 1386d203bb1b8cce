"""The templated rationale: deterministic text rendered from the score and the selected reason codes."""

from __future__ import annotations

import re
from functools import lru_cache

import jinja2
from jinja2 import nodes

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
    raises = [_sentence_case(c.text) for c in reason_codes if c.direction == "raises"]
    lowers = [_sentence_case(c.text) for c in reason_codes if c.direction == "lowers"]
    threshold_text = f"{threshold:.2f}"
    if _SKELETON_SAFE and "\x00" not in model_label:  # NUL marks the skeleton's slots
        skeleton = _skeleton(model_label, threshold_text, decision, len(raises), len(lowers), bool(agreement_summary))
        return skeleton.format(f"{score:.2f}", agreement_summary, *raises, *lowers).strip()
    return _render_jinja(model_label, f"{score:.2f}", threshold_text, decision, raises, lowers, agreement_summary)


def _render_jinja(model_label: str, score_text: str, threshold_text: str, decision: str, raises: list[str],
                  lowers: list[str], agreement_summary: str) -> str:
    return render_template(_TEMPLATES.get_template(_TEMPLATE), dict(
        model_label=model_label, score=score_text, threshold=threshold_text, decision=decision,
        raises=raises, lowers=lowers, agreement_summary=agreement_summary)).strip()


# ------------------------------------------------------------------ skeletons
# Rendering the Jinja template costs ~20 us a claim, and the claims of a table rarely share a whole
# rationale. But the template only prints the per-claim texts (score, reason texts, agreement) and
# tests whether there are any; so it is rendered once per shape (model, threshold, decision, how
# many reasons of each direction, agreement or not) with markers in place of those texts, and each
# claim's rationale is that skeleton with its texts put in. ``_prints_texts_verbatim`` checks the
# template's syntax tree for exactly that use; any other use of them renders claim by claim.

_TEMPLATE = "rationale.j2"
_SLOTS = frozenset({"score", "raises", "lowers", "agreement_summary"})
_MARKER = re.compile(r"\x00(\d+)\x00")


def _prints_texts_verbatim(tree: nodes.Node) -> bool:
    """True when the per-claim texts are only printed (``{{ score }}``, ``{{ raises|join("...") }}``)
    or tested for being there (``{% if raises %}``, ``not``, ``and``, ``or``)."""

    def is_slot(node: nodes.Node) -> bool:
        return isinstance(node, nodes.Name) and node.name in _SLOTS

    def printed(node: nodes.Node) -> bool:
        if is_slot(node):
            return True
        if isinstance(node, nodes.Filter) and node.name == "join" and is_slot(node.node) \
                and all(isinstance(arg, nodes.Const) for arg in node.args) and not node.kwargs:
            return True
        if isinstance(node, nodes.CondExpr):
            return tested(node.test) and printed(node.expr1) and (node.expr2 is None or printed(node.expr2))
        return anywhere(node)

    def tested(node: nodes.Node) -> bool:
        if is_slot(node):
            return True
        if isinstance(node, nodes.Not):
            return tested(node.node)
        if isinstance(node, (nodes.And, nodes.Or)):
            return tested(node.left) and tested(node.right)
        return anywhere(node)

    def anywhere(node: nodes.Node) -> bool:
        if is_slot(node):
            return False
        if isinstance(node, nodes.Output):
            return all(printed(child) for child in node.nodes)
        if isinstance(node, nodes.If):
            return tested(node.test) and all(map(anywhere, [*node.body, *node.elif_, *node.else_]))
        return all(anywhere(child) for child in node.iter_child_nodes())

    return anywhere(tree)


def _template_tree() -> nodes.Node:
    source, _, _ = _TEMPLATES.loader.get_source(_TEMPLATES, _TEMPLATE)  # type: ignore[union-attr]
    return _TEMPLATES.parse(source)


_SKELETON_SAFE = _prints_texts_verbatim(_template_tree())


@lru_cache(maxsize=4096)
def _skeleton(model_label: str, threshold_text: str, decision: str, n_raises: int, n_lowers: int,
              agreement: bool) -> str:
    """The rendered template as a ``str.format`` pattern over (score, agreement, *raises, *lowers)."""
    def marker(index: int) -> str:
        return f"\x00{index}\x00"

    text = _render_jinja(model_label, marker(0), threshold_text, decision,
                         [marker(2 + i) for i in range(n_raises)], [marker(2 + n_raises + i) for i in range(n_lowers)],
                         marker(1) if agreement else "")
    pieces = _MARKER.split(text)  # literal, index, literal, index, ..., literal
    return "".join(piece.replace("{", "{{").replace("}", "}}") if i % 2 == 0 else "{" + piece + "}"
                   for i, piece in enumerate(pieces))
