"""The package boundaries of pyproject.toml's [tool.importlinter], checked by lint-imports:
the deployables never import one another, contracts and protos import none of them, and
the operator console imports none of them (nor they it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "protos", "streams", "serving", "training", "ingest", "console")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` (import-linter's command, a dev dependency) run in `cwd`, which
    it reads the contracts from and imports the packages from."""
    command = Path(sys.executable).with_name("lint-imports")
    if not command.exists():
        pytest.fail(f"{command} is missing: install the dev dependencies (import-linter)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(command), "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_repository_keeps_its_package_boundaries() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, imports, broken", [
    ("streams/items.py", "serving.errors", "streams is not allowed to import serving"),
    ("serving/online.py", "streams", "serving is not allowed to import streams"),
    ("training/job.py", "ingest.dataset", "training is not allowed to import ingest"),
    ("contracts/online.py", "serving", "contracts is not allowed to import serving"),
    ("protos/events_pb2.py", "streams.online", "protos is not allowed to import streams"),
    ("serving/online.py", "torch", "serving is not allowed to import torch"),
    ("console/app.py", "serving.errors", "console is not allowed to import serving"),
    ("console/app.py", "streams", "console is not allowed to import streams"),
    ("training/job.py", "console", "training is not allowed to import console"),
])
def test_a_forbidden_import_breaks_a_contract(
    tmp_path: Path, module: str, imports: str, broken: str
) -> None:
    """The same contracts over stand-in packages: kept, until one forbidden import."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    if "." in imports:
        (tmp_path / (imports.replace(".", "/") + ".py")).write_text("")
    clean = lint_imports(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    (tmp_path / module).write_text(f"import {imports}\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout and "1 broken" in result.stdout
