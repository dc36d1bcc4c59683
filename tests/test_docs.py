"""The documentation's links hold: README.md is a front page that links every page of docs/, and every relative link
in them (and every page `reslab --help` names) reaches a file, and a heading where it names one.

Links are read with markdown-it (a dependency of rich), so a link shown inside a code span or block is not taken for
one. Anchors follow GitHub's rule for heading ids: the heading's text in lower case, punctuation dropped, spaces as
hyphens, and -1, -2, ... appended to repeats.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 250

_md = MarkdownIt("commonmark").enable("table")


def _tokens(path: Path):
    return _md.parse(path.read_text(encoding="utf-8"))


def github_anchors(path: Path) -> set[str]:
    """The ids GitHub gives the headings of a Markdown file."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    tokens = _tokens(path)
    for opening, inline in itertools.pairwise(tokens):
        if opening.type != "heading_open":
            continue
        text = "".join(child.content for child in inline.children or [])
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    """Every link and image target in a Markdown file that is not a URL with a scheme."""
    links = []
    for token in _tokens(path):
        for child in token.children or []:
            target = child.attrs.get("href") if child.type == "link_open" else child.attrs.get("src")
            if child.type in ("link_open", "image") and target and not urlsplit(str(target)).scheme:
                links.append(str(target))
    return links


def broken(source: Path, link: str) -> str | None:
    """Why `link`, written in `source`, does not resolve; None when it does."""
    parts = urlsplit(link)
    target = (source.parent / unquote(parts.path)).resolve() if parts.path else source
    if not target.exists():
        return f"{link}: no file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}"
    if not target.is_relative_to(ROOT):
        return f"{link}: points outside the repository"
    if parts.fragment and target.suffix == ".md" and parts.fragment not in github_anchors(target):
        return f"{link}: no heading with id #{parts.fragment} in {target.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    problems = [why for link in relative_links(page) if (why := broken(page, link))]
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < MAX_README_LINES, f"README.md has {lines} lines: move reference depth into docs/"


def test_readme_links_every_docs_page() -> None:
    linked = {(ROOT / urlsplit(link).path).resolve() for link in relative_links(README) if urlsplit(link).path}
    missing = [str(page.relative_to(ROOT)) for page in DOCS if page.resolve() not in linked]
    assert DOCS and not missing, f"pages of docs/ the README does not link: {missing}"


def test_cli_help_names_existing_pages() -> None:
    """`reslab --help` and its commands' help point at docs pages: each must exist, with the heading it names."""
    import argparse

    from reslab.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    epilogs = [parser.epilog or "", *(p.epilog or "" for p in subparsers.choices.values())]
    named = re.findall(r"(?:README\.md|docs/[\w.-]+\.md)(?:#[\w-]+)?", "\n".join(epilogs))
    assert named, "reslab --help names no documentation page"
    problems = [why for link in named if (why := broken(README, link))]
    assert not problems, "\n".join(problems)
