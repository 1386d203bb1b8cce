"""Explanation methods, one module each, behind the protocol in ``base``.

``EXPLAINERS`` is the ordered registry: the order is the run order (a method that reads another's
results comes after it).
"""

from risklens.explainers.base import ExplainContext, Explainer
from risklens.explainers.shap import ShapExplainer, ShapResult

EXPLAINERS: dict[str, type[Explainer]] = {cls.name: cls for cls in (ShapExplainer,)}

__all__ = ["EXPLAINERS", "ExplainContext", "Explainer", "ShapExplainer", "ShapResult"]
