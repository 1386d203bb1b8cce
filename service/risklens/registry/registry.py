"""The in-memory model registry: every model directory under a root, looked up by name and version."""

from __future__ import annotations

import logging
from pathlib import Path

from risklens.errors import ManifestError, ModelNotFound
from risklens.registry.loader import LoadedModel, load_model_dir
from risklens.registry.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)


def _version_key(version: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.replace("-", ".").split("."))


class ModelRegistry:
    def __init__(self, models: list[LoadedModel] | None = None) -> None:
        self._models: dict[str, dict[str, LoadedModel]] = {}
        for model in models or []:
            self.add(model)

    @classmethod
    def from_directory(cls, root: Path) -> "ModelRegistry":
        """Load every ``*/manifest.yaml`` under ``root`` (a model directory itself is accepted too)."""
        root = Path(root)
        if not root.is_dir():
            raise ManifestError(f"models directory {root} does not exist or is not a directory",
                                field="models_dir")
        # Hidden directories are skipped: `models add` builds a model in one before moving it in place.
        dirs = [root] if (root / MANIFEST_FILE).is_file() else sorted(
            p.parent for p in root.glob(f"*/{MANIFEST_FILE}") if not p.parent.name.startswith("."))
        registry = cls([load_model_dir(d) for d in dirs])
        if dirs:
            log.info("registry: %d model(s) from %s", len(dirs), root)
        else:
            log.warning("registry: no model directories (*/%s) in %s", MANIFEST_FILE, root)
        return registry

    def add(self, model: LoadedModel) -> None:
        self._models.setdefault(model.name, {})[model.version] = model

    def get(self, name: str, version: str = "") -> LoadedModel:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model {name!r}; loaded: {sorted(self._models)}", field="model")
        if not version:
            return versions[max(versions, key=_version_key)]
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; loaded: {sorted(versions)}",
                                field="version")
        return versions[version]

    def find_by_sha256(self, sha256: str) -> LoadedModel:
        for versions in self._models.values():
            for model in versions.values():
                if model.manifest.sha256 == sha256:
                    return model
        raise ModelNotFound(f"no loaded model has artifact sha256 {sha256}", field="sha256")

    def models(self) -> list[LoadedModel]:
        return [m for name in sorted(self._models) for _, m in sorted(self._models[name].items())]
