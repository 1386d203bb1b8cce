"""Explanation methods, one module each, behind the protocol in ``base``.

``EXPLAINERS`` is the ordered registry: the order is the run order (a method that reads another's
results comes after it).
"""

from risklens.explainers.agreement import AgreementExplainer, AgreementResult
from risklens.explainers.base import ClaimRows, ExplainContext, Explainer
from risklens.explainers.ebm import EbmExplainer, EbmResult
from risklens.explainers.ice import IceExplainer, IceResult
from risklens.explainers.lime import LimeExplainer, LimeResult
from risklens.explainers.permutation import PermutationExplainer, PermutationResult
from risklens.explainers.shap import ShapExplainer, ShapResult

EXPLAINERS: dict[str, type[Explainer]] = {
    cls.name: cls
    for cls in (ShapExplainer, LimeExplainer, IceExplainer, EbmExplainer, PermutationExplainer, AgreementExplainer)
}

__all__ = [
    "EXPLAINERS",
    "AgreementExplainer",
    "AgreementResult",
    "ClaimRows",
    "EbmExplainer",
    "EbmResult",
    "ExplainContext",
    "Explainer",
    "IceExplainer",
    "IceResult",
    "LimeExplainer",
    "LimeResult",
    "PermutationExplainer",
    "PermutationResult",
    "ShapExplainer",
    "ShapResult",
]
