"""Model registry: manifests, schemas, integrity hashes, per-framework loading."""

from risklens.registry.builder import infer_schema, write_model_dir
from risklens.registry.hashing import file_sha256
from risklens.registry.loader import LoadedModel, load_model_dir, verified_path
from risklens.registry.manifest import ArtifactRef, FeatureSpec, Manifest
from risklens.registry.registry import ModelRegistry
from risklens.registry.schema import claims_frame, frame_to_claims, validate_claim

__all__ = [
    "ArtifactRef",
    "FeatureSpec",
    "LoadedModel",
    "Manifest",
    "ModelRegistry",
    "claims_frame",
    "file_sha256",
    "frame_to_claims",
    "infer_schema",
    "load_model_dir",
    "validate_claim",
    "verified_path",
    "write_model_dir",
]
