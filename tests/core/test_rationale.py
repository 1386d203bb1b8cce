"""Reason codes and the templated rationale: deterministic, from the top contributions, in plain words."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from risklens.rationale import Catalogue, ReasonCode, ReasonCodeSelector, format_value, render_rationale
from risklens.registry import FeatureSpec, Manifest


def _manifest() -> Manifest:
    features = [FeatureSpec(name="capital-gains", type="numeric"), FeatureSpec(name="fault", type="categorical",
                categories=["holder", "third_party"]), FeatureSpec(name="witness", type="boolean"),
                FeatureSpec(name="age", type="numeric", nullable=True)]
    return Manifest(name="m", version="1", framework="xgboost", artifact="a", sha256="0", features=features)


def test_generic_codes_cover_every_feature_even_with_awkward_names():
    manifest = _manifest()
    catalogue = Catalogue.model_validate({"codes": [
        {"code": "F1", "features": ["fault"], "raises": "The holder ({{ fault }}) was at fault",
         "lowers": "A third party was at fault"}]}).completed(manifest)
    claim = {"capital-gains": 53300.0, "fault": "holder", "witness": False, "age": None}
    codes = ReasonCodeSelector(catalogue, manifest).select(claim, np.array([0.9, 0.5, -0.2, -0.01]), top_k=2)
    assert [(c.code, c.direction) for c in codes] == [
        ("RL_CAPITAL-GAINS", "raises"), ("F1", "raises"), ("RL_WITNESS", "lowers"), ("RL_AGE", "lowers")]
    assert codes[0].text == "capital-gains (53,300) raised the risk"
    assert codes[1].text == "The holder (holder) was at fault"
    assert codes[2].text == "witness (no) lowered the risk"
    assert codes[3].text == "age (missing) lowered the risk"
    assert codes[1].weight == 0.5 and codes[0].features == ("capital-gains",)


def test_grouped_code_weight_is_the_sum_of_its_features():
    manifest = _manifest()
    catalogue = Catalogue.model_validate({"codes": [
        {"code": "G", "features": ["fault", "witness"], "raises": "up", "lowers": "down"}]}).completed(manifest)
    codes = ReasonCodeSelector(catalogue, manifest).select(
        {"capital-gains": 1.0, "fault": "holder", "witness": True, "age": 3.0}, np.array([0.0, 0.4, -0.1, 0.0]), top_k=3)
    assert [(c.code, round(c.weight, 12)) for c in codes] == [("G", 0.3)]


def test_rationale_is_deterministic_and_states_score_decision_and_reasons():
    codes = [ReasonCode("A", "The claim came 5 days after the policy started", "raises", 1.2, ("d",)),
             ReasonCode("B", "NCB discount applied", "raises", 0.3, ("n",)),
             ReasonCode("C", "A third party was at fault", "lowers", -0.4, ("f",))]
    kwargs = dict(model_label="Claims model", score=0.8123, threshold=0.5, decision="refer", reason_codes=codes)
    text = render_rationale(**kwargs)
    assert text == render_rationale(**kwargs)
    assert text.startswith("Claims model scored this claim 0.81 against a referral threshold of 0.50: refer it")
    assert "the claim came 5 days after the policy started; NCB discount applied." in text
    assert "What lowered the risk: a third party was at fault." in text
    calm = render_rationale(model_label="M", score=0.1, threshold=0.5, decision="pass", reason_codes=[])
    assert "no referral needed" in calm and "No single feature" in calm


def test_withheld_texts_never_show_a_hidden_value_nor_state_a_false_one():
    """Printed values become [redacted]; a template that tests or filters a hidden value is withheld
    whole (rendered with a stand-in it would say "third party" or "0"); other texts stay as they are."""
    manifest = _manifest()
    catalogue = Catalogue.model_validate({"codes": [
        {"code": "F1", "features": ["fault"], "lowers": "Fault lowered the risk",
         "raises": "{% if fault == 'holder' %}The holder was at fault{% else %}A third party was at fault{% endif %}"},
        {"code": "A1", "features": ["age"], "raises": "Aged {{ age|int }}", "lowers": "Aged {{ age }}"}]}
    ).completed(manifest)
    selector = ReasonCodeSelector(catalogue, manifest)
    claim = {"capital-gains": 53300.0, "fault": "holder", "witness": False, "age": 77.0}
    codes = selector.select(claim, np.array([0.9, 0.5, -0.2, 0.3]), top_k=4)
    assert [c.text for c in codes] == ["capital-gains (53,300) raised the risk", "The holder was at fault", "Aged 77",
                                       "witness (no) lowered the risk"]
    withheld = selector.withheld(claim, codes, frozenset({"fault", "age", "witness"}))
    assert [c.text for c in withheld] == ["capital-gains (53,300) raised the risk", "[redacted]", "[redacted]",
                                          "witness ([redacted]) lowered the risk"]
    assert [c[:1] + c[2:] for c in withheld] == [c[:1] + c[2:] for c in codes]  # only the texts change
    assert selector.withheld(claim, codes, frozenset({"age"})) is not None
    assert selector.withheld(claim, codes[:1], frozenset({"fault"})) is None  # no text reads it


def test_a_code_name_defined_twice_is_refused(tmp_path):
    import pytest

    from risklens.errors import ManifestError

    path = tmp_path / "reason_codes.yaml"
    path.write_text("codes:\n- {code: RL_AGE, features: [fault], raises: up, lowers: down}\n")
    with pytest.raises(ManifestError, match=r"\['RL_AGE'\].*defined twice"):
        Catalogue.read(path, _manifest())


def test_format_value():
    assert [format_value(v) for v in (None, True, 3.0, 1234.5, "x")] == ["missing", "yes", "3", "1,234.50", "x"]


def test_code_texts_are_reused_only_between_claims_that_read_the_same_values():
    """Renderings are shared by the values a text reads; a text that reads other features stays per claim."""
    manifest = _manifest()
    catalogue = Catalogue.model_validate({"codes": [
        {"code": "F1", "features": ["fault"], "raises": "fault {{ fault }} with witness {{ claim['witness'] }}",
         "lowers": "fault lowered ({{ claim | length }} features)"}]}).completed(manifest)
    selector = ReasonCodeSelector(catalogue, manifest)
    claims = [{"capital-gains": 1.0, "fault": "holder", "witness": witness, "age": age}
              for witness in (True, False) for age in (3.0, None)]
    shap = np.array([[0.0, 0.5, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, -0.5, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    rows = selector.select_rows(claims, shap, top_k=1)
    assert [codes[0].text for codes in rows] == [
        "fault holder with witness yes", "fault holder with witness yes", "fault lowered (4 features)",
        "fault holder with witness no"]
    # One claim at a time gives the same codes, texts and weights, bit for bit.
    for claim, values, codes in zip(claims, shap, rows):
        assert selector.select(claim, values, top_k=1) == codes


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300)
@example(model_label="M\x001\x00", score=0.5, threshold=0.5, refer=True, reasons=[("raises", "\x000\x00")],
         agreement="")
@given(model_label=texts, score=st.floats(0, 1), threshold=st.floats(0, 1), refer=st.booleans(),
       reasons=st.lists(st.tuples(st.sampled_from(["raises", "lowers"]), texts), max_size=7),
       agreement=texts)
def test_rationale_from_the_skeleton_is_the_jinja_rendering(model_label, score, threshold, refer, reasons,
                                                              agreement):
    """Per-claim texts put into a rendered skeleton give exactly what rendering the template gives."""
    from risklens.rationale import render

    assert render._SKELETON_SAFE  # the shipped template only prints and tests the per-claim texts
    decision = "refer" if refer else "pass"
    codes = [ReasonCode(f"C{i}", text, direction, 1.0, ("x",)) for i, (direction, text) in enumerate(reasons)]
    raises = [render._sentence_case(c.text) for c in codes if c.direction == "raises"]
    lowers = [render._sentence_case(c.text) for c in codes if c.direction == "lowers"]
    expected = render._render_jinja(model_label, f"{score:.2f}", f"{threshold:.2f}", decision, raises, lowers,
                                    agreement)
    assert render_rationale(model_label=model_label, score=score, threshold=threshold, decision=decision,
                            reason_codes=codes, agreement_summary=agreement) == expected


def test_templates_that_do_more_than_print_the_texts_render_claim_by_claim():
    from risklens.rationale import render

    def verbatim(source: str) -> bool:
        return render._prints_texts_verbatim(render._TEMPLATES.parse(source))

    assert verbatim('{{ score }}: {% if raises and not lowers %}{{ raises|join("; ") }}{% endif %}')
    assert verbatim('{{ "x" if agreement_summary else "y" }} {{ decision|upper }}')
    for source in ('{{ raises|join("; ")|upper }}', '{{ score|float > 0.5 }}', '{% if score > "0.5" %}x{% endif %}',
                   "{% for r in raises %}{{ r }}{% endfor %}", "{{ raises[0] }}", "{{ lowers|length }}",
                   "{% set s = agreement_summary %}{{ s }}", '{{ raises|join(sep) }}'):
        assert not verbatim(source), source


def test_code_texts_that_only_print_values_render_without_jinja_as_jinja_would():
    from pathlib import Path

    from risklens.rationale.catalogue import PlainText, _compiled, plain_text, render_template
    from risklens.registry import load_model_dir

    demo = load_model_dir(Path(__file__).resolve().parents[2] / "models" / "demo-xgb")
    manifests = [demo.manifest, _manifest()]
    quoted = FeatureSpec(name="it's", type="numeric")
    manifests.append(Manifest(name="q", version="1", framework="xgboost", artifact="a", sha256="0",
                              features=[*_manifest().features, quoted]))
    texts = {"{{ fault }} at {{claim['capital-gains']}} and {{ claim[\"it's\"] }}!": True,
             "{{ fault -}} x": False, "{{ fault|upper }}": False, "line\n{{ fault }}": False, "{{ fault }}\n": False,
             "{% if fault %}{{ fault }}{% endif %}": False, "{{ unknown }}": False, "{{ true }}": False,
             "{# note #}{{ fault }}": False, "no values at all": True}
    checked = 0
    for manifest in manifests:
        names = manifest.feature_names
        catalogue = Catalogue.read(demo.directory / demo.manifest.reason_codes, manifest) if manifest is demo.manifest \
            else Catalogue().completed(manifest)
        candidates = {text: None for spec in catalogue.codes for text in (spec.raises, spec.lowers)}
        if manifest.name == "q":
            candidates.update(texts)
        for text, expected_plain in candidates.items():
            plain = plain_text(text, names)
            if expected_plain is not None:
                assert (plain is not None) == expected_plain, text
            if plain is None:
                continue
            values = {name: f"<{name} value>" for name in names}
            assert isinstance(plain, PlainText)
            assert plain.render(values) == render_template(_compiled(text), {**values, "claim": values}), text
            checked += 1
    assert checked >= 20  # every demo and generic text is plain, and the hand-written plain ones


def _reference_codes(catalogue: Catalogue, manifest: Manifest, claim: dict, shap: np.ndarray, top_k: int
                     ) -> list[ReasonCode]:
    """Reason codes as the contract states them, claim by claim in plain Python: a code's weight is the
    sum of its features' contributions; the top_k codes that raise the risk (largest first, ties in
    catalogue order), then the top_k that lower it (most negative first); texts rendered with the
    claim's values in words."""
    import jinja2

    position = {name: i for i, name in enumerate(manifest.feature_names)}
    weights = []
    for spec in catalogue.codes:
        weight = float(shap[position[spec.features[0]]])
        for name in spec.features[1:]:
            weight += float(shap[position[name]])
        weights.append(weight)
    order = sorted(range(len(weights)), key=lambda c: -weights[c])
    words = {name: value if isinstance(value, str) else format_value(value) for name, value in claim.items()}
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)

    def code(c: int, direction: str) -> ReasonCode:
        spec = catalogue.codes[c]
        text = environment.from_string(getattr(spec, direction)).render({**words, "claim": words})
        return ReasonCode(spec.code, text, direction, weights[c], tuple(spec.features))

    return ([code(c, "raises") for c in order[:top_k] if weights[c] > 0]
            + [code(c, "lowers") for c in order[::-1][:top_k] if weights[c] < 0])


_SHAP = st.sampled_from([-0.5, -0.1, -0.0, 0.0, 0.1, 0.3, 0.5])
_CLAIM = st.fixed_dictionaries({
    "capital-gains": st.sampled_from([0.0, -0.0, 53300.0, 1234.5, 3.0]), "fault": st.sampled_from(["holder", "third_party"]),
    "witness": st.sampled_from([True, False, None]), "age": st.sampled_from([None, 3.0, -0.0, 61.0])})


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(_CLAIM, st.lists(_SHAP, min_size=4, max_size=4)), min_size=1, max_size=12),
       top_k=st.integers(0, 6))
def test_codes_of_a_batch_are_the_reference_codes_of_each_claim(rows, top_k):
    """select_rows (arrays, texts once per distinct shown value) gives each claim exactly the codes the
    plain per-claim reference gives: the same codes, order, texts and weights, ties and -0.0 included."""
    manifest = _manifest()
    catalogue = Catalogue.model_validate({"codes": [
        {"code": "G", "features": ["fault", "witness"], "raises": "{{ fault }} and witness {{ witness }}",
         "lowers": "down with {{ claim['age'] }} ({{ claim | length }} features)"},
        {"code": "A", "features": ["age"], "raises": "age {{ age }} raised it", "lowers": "age {{ age }}"}]
    }).completed(manifest)
    selector = ReasonCodeSelector(catalogue, manifest)
    claims = [claim for claim, _ in rows]
    shap = np.array([values for _, values in rows], dtype=np.float64)
    expected = [_reference_codes(catalogue, manifest, claim, values, top_k) for claim, values in zip(claims, shap)]
    assert selector.select_rows(claims, shap, top_k) == expected
    assert [selector.select(claim, values, top_k) for claim, values in zip(claims, shap)] == expected
