"""The production model version and its item vectors, from the artifact store.

Reading and checking a version (its name, manifest, item ids and vectors) is
:mod:`contracts.artifact`'s; here its refusals become serving's :class:`ArtifactError`
(``FAILED_PRECONDITION`` at the gRPC edge), and the bootstrap version stands in while
the store has no production version.
"""

from __future__ import annotations

import logging
from pathlib import Path

from contracts import artifact
from contracts.artifact import StoredVersion
from serving.errors import ArtifactError

log = logging.getLogger(__name__)

BOOTSTRAP_VERSION = artifact.BASE_VERSION


def artifact_path(uri: str) -> Path:
    """The local directory of an artifact uri (a path or a ``file://`` url)."""
    with artifact.errors_as(ArtifactError):
        return artifact.artifact_path(uri)


def production_version(artifact_dir: Path) -> str:
    """The version ``production.json`` names, or the bootstrap version without one."""
    with artifact.errors_as(ArtifactError):
        version = artifact.production_version(artifact_dir)
    if version is None:
        log.info("no %s: the production version is the bootstrap model %r",
                 artifact_dir / artifact.PRODUCTION, BOOTSTRAP_VERSION)
        return BOOTSTRAP_VERSION
    return version


def load_version(version_dir: Path, version: str) -> StoredVersion:
    """Read and check one version directory's manifest, item ids and item vectors."""
    with artifact.errors_as(ArtifactError):
        stored = artifact.read_version(version_dir, version)
    log.info("model %s: %s item vectors of dimension %s", version, len(stored.item_ids),
             stored.dim)
    return stored
