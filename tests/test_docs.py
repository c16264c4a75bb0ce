"""The repository explains itself: docs/api.md matches the served OpenAPI schema, every relative
link in the documentation resolves, and nothing points at documents outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from api.reference import DOC_PATH, render_reference, served_schema

ROOT = Path(__file__).resolve().parents[1]
# A path out of the checkout, or a document that only exists beside it.
OUTSIDE = re.compile(r"\.\./shared|/work/|DESIGN(\.md| §)|spec/API\.md|\bissues?\s+#?\d+")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def test_api_reference_matches_served_schema() -> None:
    assert DOC_PATH.read_text() == render_reference(served_schema()), (
        "docs/api.md differs from the served OpenAPI schema: run `python -m api.reference`")


def test_api_reference_covers_every_operation() -> None:
    schema = served_schema()
    text = DOC_PATH.read_text()
    for path, operations in schema["paths"].items():
        for method in operations:
            assert f"## {method.upper()} {path}\n" in text


def test_no_reference_points_outside_the_repository() -> None:
    here = Path(__file__).resolve()
    offenders = []
    for path in _tracked("*.py", "*.md", "*.yaml", "*.toml", "*.html", "*.js", "*.mjs", "Makefile", ".ci/run"):
        if path == here or "vendor" in path.parts:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "references outside the repository:\n" + "\n".join(offenders)


def test_relative_links_in_the_docs_resolve() -> None:
    broken = []
    for doc in _tracked("*.md"):
        if "vendor" in doc.parts:
            continue
        for target in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)
