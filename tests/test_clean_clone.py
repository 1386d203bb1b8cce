"""What a newcomer gets from a clean clone: the files the two README commands need, stubs built from protos/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_clean_clone_builds_stubs_and_runs_the_demo(repo_root: Path, tmp_path: Path):
    clone = tmp_path / "risklens"
    subprocess.run(["git", "clone", "--quiet", str(repo_root), str(clone)], check=True)
    assert not list(clone.rglob("*_pb2*.py")), "generated stubs must not be committed"
    readme = (clone / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (clone / ".ci" / "run").read_text()
    dry_run = subprocess.run(["make", "-n", "demo", "test"], cwd=clone, capture_output=True, text=True, check=True)
    for step in ("-m venv", "pip install", "-r requirements.lock", "-e .", "risklens.trees._aot", "compileall",
                 "risklens.demo", "pytest"):
        assert step in dry_run.stdout, step
    # The install-time hook generates the stubs from protos/ (pip runs build_py for every install).
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "build")],
                   cwd=clone, check=True, capture_output=True)
    assert (clone / "service" / "risklens" / "v1" / "risklens_pb2_grpc.py").is_file()
    demo = subprocess.run([sys.executable, "-m", "risklens.demo"], cwd=clone, capture_output=True, text=True,
                          timeout=300, env={**_env(), "PYTHONPATH": str(clone / "service")}, check=True)
    assert "decision:" in demo.stdout and "rationale:" in demo.stdout
    assert "INVALID_ARGUMENT" in demo.stdout
    assert "server stopped" in demo.stdout


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
