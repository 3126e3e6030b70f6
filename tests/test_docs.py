"""The README and the documentation site (mkdocs.yml, built strictly by `tox -e docs` in CI): the
README stays a short entry point whose quick start is what CI runs, and every page under docs/ is
reachable from the site's navigation (the strict build refuses a page left out, but only in CI;
this says so in the unit tests, where a new page is written)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_short_and_its_quick_start_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "tox -e tests" in quick and "python3 -m tox -e tests" in ci
    assert "python3 -m tox -e docs" in ci


def test_every_docs_page_is_in_the_site_navigation():
    nav = set(re.findall(r"^\s+- [^:\n]+: (\S+\.md)$", (ROOT / "mkdocs.yml").read_text(), flags=re.M))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages - nav == set()
