"""The Khronos glTF validator (npm `gltf-validator`) for tests: installed once into a git-ignored
folder of the checkout, run through node on one file (tests/gltf_validate.mjs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

VERSION = "2.0.0-dev.3.10"
ROOT = Path(__file__).resolve().parent.parent
PREFIX = ROOT / ".cache" / "npm-gltf-validator"
SCRIPT = Path(__file__).resolve().parent / "gltf_validate.mjs"


def ensure_validator() -> Path:
    """The npm prefix holding gltf-validator@VERSION (installed when missing); skips the test
    only when node or npm is not installed at all."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: the glTF validator is a JavaScript library")
    package = PREFIX / "node_modules" / "gltf-validator" / "package.json"
    if not package.is_file() or json.loads(package.read_text()).get("version") != VERSION:
        PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund",
                        "--no-save", f"gltf-validator@{VERSION}"], check=True, capture_output=True, timeout=300)
    return PREFIX


def validate(path: Path) -> dict[str, Any]:
    """The validator's report of a .glb or .gltf (external files read from beside it)."""
    out = subprocess.run(["node", str(SCRIPT), str(ensure_validator()), str(path)],
                         check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def assert_valid(path: Path) -> dict[str, Any]:
    """0 errors and 0 warnings (infos and hints are allowed); returns the report."""
    report = validate(path)
    issues = report["issues"]
    problems = [m for m in issues["messages"] if m["severity"] <= 1]
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, (path.name, problems)
    return report
