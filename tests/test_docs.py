"""The README and docs/ stand alone: every relative link resolves inside the repository and no
file a user reads points outside it."""

import re

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve_inside_the_repository(page):
    for target in LINK.findall(page.read_text()):
        if "://" in target:
            continue
        path = (page.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{page.name} links outside the repository: {target}"
        assert path.exists(), f"{page.name} links to a missing file: {target}"


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, page.name


def test_no_user_facing_file_names_a_path_outside_the_repository():
    files = [*PAGES, *(ROOT / "src").rglob("*.py"), *(ROOT / "backends").rglob("*.py"),
             *(ROOT / "configs").rglob("*.yaml"), ROOT / "Makefile", ROOT / "pyproject.toml"]
    for path in files:
        text = path.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, path
