"""Model directories: integrity checks, versions, schema validation messages."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risklens.errors import ArtifactIntegrityError, ManifestError, ModelNotFound, SchemaError
from risklens.registry import ModelRegistry, load_model_dir, validate_claim
from risklens.registry.manifest import FeatureSpec, Manifest


@pytest.fixture()
def xgb_copy(tmp_path: Path, demo_models_dir: Path) -> Path:
    return Path(shutil.copytree(demo_models_dir / "demo-xgb", tmp_path / "demo-xgb"))


def test_refuses_artifact_whose_sha256_differs(xgb_copy: Path):
    artifact = xgb_copy / "model.json"
    artifact.write_bytes(artifact.read_bytes().replace(b'"base_score"', b'"base_score" ', 1))
    with pytest.raises(ArtifactIntegrityError, match="sha256") as info:
        load_model_dir(xgb_copy)
    assert info.value.code == "FAILED_PRECONDITION"


def test_refuses_missing_artifact_and_bad_manifest(xgb_copy: Path):
    (xgb_copy / "model.json").unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        load_model_dir(xgb_copy)
    (xgb_copy / "manifest.yaml").write_text("name: x\nframework: tensorflow\n")
    with pytest.raises(ManifestError, match="invalid manifest"):
        load_model_dir(xgb_copy)


def test_xgboost_ubj_artifact_loads(xgb_copy: Path):
    from risklens.registry import file_sha256

    model = load_model_dir(xgb_copy)
    model.artifact.save_model(str(xgb_copy / "model.ubj"))
    manifest = Manifest.read(xgb_copy).model_copy(update={"artifact": "model.ubj",
                                                           "sha256": file_sha256(xgb_copy / "model.ubj")})
    manifest.write(xgb_copy)
    reloaded = load_model_dir(xgb_copy)
    frame = model.background.head(20)
    assert (reloaded.raw_output(frame) == model.raw_output(frame)).all()


def test_registry_versions(tmp_path: Path, demo_models_dir: Path):
    for version in ("1.2.0", "1.10.0"):
        target = Path(shutil.copytree(demo_models_dir / "demo-xgb", tmp_path / f"v{version}"))
        manifest = Manifest.read(target).model_copy(update={"version": version})
        manifest.write(target)
    registry = ModelRegistry.from_directory(tmp_path)
    assert registry.get("demo-xgb").version == "1.10.0"  # numeric, not lexicographic
    assert registry.get("demo-xgb", "1.2.0").version == "1.2.0"
    with pytest.raises(ModelNotFound) as info:
        registry.get("demo-xgb", "3.0")
    assert info.value.field == "version"


def test_validation_messages_name_the_field(demo_models_dir: Path):
    manifest = load_model_dir(demo_models_dir / "demo-xgb").manifest
    claim = {f.name: (f.categories[0] if f.type == "categorical" else False if f.type == "boolean"
                      else max(f.min or 0.0, 1.0)) for f in manifest.features}
    assert validate_claim(manifest, claim)["claim_amount"] == 1.0
    cases = {
        "vehicle_price_band": ("cheap", "outside the schema"),
        "past_claims": (True, "must be a number"),
        "accident_area": (None, "null"),
        "police_report_filed": ("yes", "must be a boolean"),
    }
    for field, (value, fragment) in cases.items():
        with pytest.raises(SchemaError) as info:
            validate_claim(manifest, {**claim, field: value})
        assert info.value.field == field
        assert fragment in info.value.message and field in info.value.message


def test_text_columns_stored_in_arrow_encode_as_value_by_value(demo_models_dir: Path):
    """encode_frame looks long Arrow-backed text columns up on the whole column; object columns and
    short ones value by value. All give the same matrix, missing and unknown categories included (NaN)."""
    import numpy as np
    import pandas as pd

    from risklens.datasets import generate_claims
    from risklens.registry.schema import encode_frame

    manifest = load_model_dir(demo_models_dir / "demo-xgb").manifest
    frame, _ = generate_claims(300, 5)  # long enough for the whole-column lookup
    frame = frame[manifest.feature_names]
    categorical = [f.name for f in manifest.features if f.type == "categorical"]
    as_objects = frame.astype({name: object for name in categorical})
    as_objects.loc[2, categorical[0]] = None
    as_objects.loc[3, categorical[-1]] = "not-a-category"
    as_arrow = as_objects.astype({name: "str" for name in categorical})
    assert all(isinstance(as_arrow[name].array, pd.arrays.ArrowStringArray) for name in categorical)
    assert not any(isinstance(as_objects[name].array, pd.arrays.ArrowStringArray) for name in categorical)
    expected = encode_frame(manifest, as_objects)
    assert np.isnan(expected).any()
    np.testing.assert_array_equal(encode_frame(manifest, as_arrow), expected)
    np.testing.assert_array_equal(encode_frame(manifest, as_arrow.iloc[:5]), expected[:5])


def test_yaml_files_read_as_pyyaml_safe_load_reads_them(demo_models_dir: Path, tmp_path: Path):
    """Manifests and catalogues go through libyaml's parser: the same documents as the pure-Python one,
    for the shipped models and for a manifest inferred from messy claims (dates, '?', odd category texts)."""
    import pandas as pd
    import yaml

    from risklens.registry import infer_schema
    from risklens.registry.manifest import load_yaml

    messy = pd.DataFrame({"incident_date": ["2015-01-25", "2015-02-30", "?"], "amount": [1.5, None, 3e16],
                          "kind": ['Zürich "north"', "yes", "1e3"], "flag": ["Y", "N", "no"]})
    inferred = Manifest(name="m", version="1", framework="xgboost", artifact="a", sha256="0" * 64,
                        features=infer_schema(messy))
    inferred.write(tmp_path)
    files = [*demo_models_dir.glob("*/*.yaml"), tmp_path / "manifest.yaml"]
    assert len(files) >= 5
    assert yaml.__with_libyaml__  # the parser the registry means to use is there
    for path in files:
        text = path.read_text()
        assert load_yaml(text) == yaml.safe_load(text), path.name


def _feature_specs() -> st.SearchStrategy[list[FeatureSpec]]:
    numeric = st.builds(FeatureSpec, type=st.just("numeric"), nullable=st.booleans())
    boolean = st.builds(FeatureSpec, type=st.just("boolean"), nullable=st.booleans())
    categorical = st.builds(FeatureSpec, type=st.just("categorical"), nullable=st.booleans(),
                            encoding=st.sampled_from(["onehot", "ordinal"]),
                            categories=st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=5, unique=True))
    return st.lists(st.one_of(numeric, boolean, categorical), min_size=1, max_size=6).map(
        lambda specs: [spec.model_copy(update={"name": f"f{i}"}) for i, spec in enumerate(specs)])


def _valid_value(spec: FeatureSpec) -> st.SearchStrategy[Any]:
    if spec.type == "numeric":
        value = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**6, 10**6)
    elif spec.type == "boolean":
        value = st.booleans()
    else:
        value = st.sampled_from(spec.categories)
    return st.none() | value if spec.nullable else value


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_encoding_straight_from_the_values_is_the_frames_encoding(data: st.DataObject) -> None:
    """encode_columns (few claims, no pandas) gives encode_frame's matrix of the same claims' frame."""
    import numpy as np

    from risklens.registry.schema import columns_frame, encode_columns, encode_frame

    manifest = Manifest(name="m", version="1", framework="xgboost", artifact="a", sha256="s",
                        features=data.draw(_feature_specs()))
    claims = data.draw(st.lists(st.fixed_dictionaries({s.name: _valid_value(s) for s in manifest.features}),
                                min_size=1, max_size=12))
    checked = [validate_claim(manifest, claim) for claim in claims]
    columns = {name: [claim[name] for claim in checked] for name in manifest.feature_names}
    expected = encode_frame(manifest, columns_frame(manifest, columns))
    np.testing.assert_array_equal(encode_columns(manifest, columns), expected)
