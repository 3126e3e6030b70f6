"""mkdocs hooks (``hooks:`` in mkdocs.yml) for the documentation site.

- The README is the home page.  It sits at the repository root and links the pages of ``docs/`` as
  ``docs/NAME.md``, which is right on GitHub; on the site the pages sit beside the home page, so
  those links lose their ``docs/`` prefix, and the pages' links to ``../README.md`` lead to the
  home page.  Any other relative link in the README points outside the site, and
  ``mkdocs build --strict`` refuses it (``validation`` in mkdocs.yml).
- The docstrings' doctest examples (``>>>`` lines and their output, as ``tests/test_functional.py``
  runs them) are shown as code: Markdown would read ``>>>`` as nested quotes and ``x[0]`` as a
  link."""

from __future__ import annotations

import re
from pathlib import Path

from markdown import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.structure.files import File

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^\s*(```|~~~)")


def readme_as_home(text: str) -> str:
    """The README's text with its ``](docs/...)`` links made relative to the site's root."""
    return re.sub(r"\]\(docs/", "](", text)


def readme_links_to_home(text: str) -> str:
    """A page's links to the README (``../README.md`` from docs/, ``../../README.md`` one folder
    deeper, anchors kept) made links to the home page, which sits one folder lower."""
    return re.sub(r"\]\((?:\.\./)((?:\.\./)*)README\.md", r"](\1index.md", text)


def fence_doctests(lines: list[str]) -> list[str]:
    """Each run of lines from a ``>>>`` line to the next blank line, outside fenced code, fenced as
    ``pycon``."""
    out: list[str] = []
    in_fence = False
    indent = None  # the indentation of the doctest being fenced, None outside one
    for line in lines:
        if indent is not None and not line.strip():
            out += ["```", ""]
            indent = None
        if FENCE.match(line) and indent is None:
            in_fence = not in_fence
        elif not in_fence and indent is None and line.lstrip().startswith(">>>"):
            out += ["", "```pycon"]
            indent = len(line) - len(line.lstrip())
        out.append(line if indent is None else line[min(indent, len(line) - len(line.lstrip())):])
    return out + (["```"] if indent is not None else [])


class _DoctestFences(Preprocessor):
    def run(self, lines):
        return fence_doctests(lines)


class DoctestFences(Extension):
    def extendMarkdown(self, md):
        # before the fenced-code preprocessor (25, pymdownx.superfences), which then reads the new fences
        md.preprocessors.register(_DoctestFences(md), "doctest_fences", 27)


def on_config(config):
    config.markdown_extensions.append(DoctestFences())
    return config


def on_page_markdown(markdown, page, config, files):
    return readme_links_to_home(markdown)


def on_files(files, config):
    files.append(File.generated(config, "index.md", content=readme_as_home(README.read_text(encoding="utf-8"))))
    return files
