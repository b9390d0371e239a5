"""The code cites only documentation inside the repository, and every cited section exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

SOURCES = [p for p in Path(ROOT).rglob("*") if p.suffix in (".py", ".md", ".ipynb", ".sh", ".toml", ".cff")
           and not set(p.relative_to(ROOT).parts[:1]) & {".git", ".venv", "venv", ".ci-venv", "build", "dist"}]


def test_no_reference_to_a_design_file_outside_the_repo():
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES
                 if p.name != "test_docs.py" and re.search(r"DESIGN\.md|\.\./shared/|seed-data", p.read_text("utf-8"))]
    assert offenders == []


def test_cited_doc_sections_exist():
    cited = 0
    for p in SOURCES:
        for doc, sections in re.findall(r"docs/(\w+\.md)((?: §\d+(?: and §\d+)?)?)", p.read_text("utf-8")):
            target = Path(ROOT) / "docs" / doc
            assert target.is_file(), f"{p.relative_to(ROOT)} cites docs/{doc}, which does not exist"
            headings = re.findall(r"^#+ (§\d+)", target.read_text("utf-8"), flags=re.M)
            for section in re.findall(r"§\d+", sections):
                assert section in headings, f"{p.relative_to(ROOT)} cites docs/{doc} {section}: not a heading"
                cited += 1
    assert cited >= 5  # the math, the transforms, the data formats, the model cite it


def test_readme_links_to_repository_files_exist():
    readme = (Path(ROOT) / "README.md").read_text("utf-8")
    links = [t for t in re.findall(r"\]\(([^)#]+)\)", readme) if not t.startswith("http")]
    assert "docs/ARCHITECTURE.md" in links and "CITATION.cff" in links
    assert [t for t in links if not (Path(ROOT) / t).exists()] == []
