"""Citations of docs/ resolve: every ``docs/<file>.md#<anchor>`` in the code names an existing page and
heading, every link between the pages resolves, and no citation of a document outside the
repository ("spec section 6", ``seed-systems.md``, ...) is left. Pure text, no imports of rwkvkit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("src", "tests", "benchmarks", "experiments")
SUFFIXES = {".py", ".md", ".cpp", ".h", ".toml"}

CITATION = re.compile(r"docs/([\w.\-/]+?\.md)(?:#([\w\-]+))?")
MD_LINK = re.compile(r"\]\(([^()\s#]*)(?:#([^()\s]*))?\)")
# documents that exist only outside the repository, and "spec section N" / "spec §N" phrasing; matched
# in lower-cased text, one pattern at a time (each starts with a literal, which keeps the scan fast)
STALE = [
    re.compile(p)
    for p in (
        r"spec\s+section", r"spec\s*§", r"rwkv-spec", r"(?<!docs/)seed-systems\.md", r"peers\.md",
        r"design\.md", r"style\.md", r"offline-data\.md", r"shared/reference",
    )
]  # fmt: skip


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: the rendered text, lower case, punctuation dropped
    (letters, digits, ``-`` and ``_`` kept), spaces turned into ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").strip().lower()
    return "".join("-" if ch == " " else ch for ch in text if ch.isalnum() or ch in " -_")


def anchors(page: Path) -> set[str]:
    """Anchors of every heading of ``page`` (fenced code blocks skipped; repeats get ``-1``, ``-2``)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def scanned_files() -> list[Path]:
    this = Path(__file__).resolve()
    files = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file() and path.resolve() != this:
                files.append(path)
    return files


@pytest.fixture(scope="module")
def texts() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8", errors="replace") for p in scanned_files()}


@pytest.fixture(scope="module")
def page_anchors() -> dict[str, set[str]]:
    return {p.relative_to(DOCS).as_posix(): anchors(p) for p in DOCS.rglob("*.md")}


def where(path: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, pos) + 1}"


def test_github_slug():
    assert github_slug("The 5.0 chunked matrix form") == "the-50-chunked-matrix-form"
    assert github_slug("fla RWKV-7") == "fla-rwkv-7"
    assert github_slug("Key-major `S[key, value]` state") == "key-major-skey-value-state"


def test_code_citations_resolve(texts, page_anchors):
    bad, count = [], 0
    for path, text in texts.items():
        for m in CITATION.finditer(text):
            count += 1
            page, anchor = m.group(1), m.group(2)
            if page not in page_anchors:
                bad.append(f"{where(path, text, m.start())}: no page docs/{page}")
            elif anchor and anchor not in page_anchors[page]:
                bad.append(f"{where(path, text, m.start())}: docs/{page} has no heading #{anchor}")
    assert not bad, "citations of docs/ that do not resolve:\n" + "\n".join(bad)
    assert count >= 20, f"only {count} citations of docs/ found: is the pattern still right?"


def test_links_between_pages_resolve(page_anchors):
    bad = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for m in MD_LINK.finditer(text):
            target, anchor = m.group(1), m.group(2)
            if target.startswith(("http://", "https://")):
                continue
            name = (page.parent / target).resolve() if target else page.resolve()
            try:
                rel = name.relative_to(DOCS.resolve()).as_posix()
            except ValueError:
                if not name.exists():
                    bad.append(f"{page.relative_to(ROOT)}: link to a missing file {target}")
                continue
            if not rel.endswith(".md"):  # an image or another file inside docs/
                if not name.is_file():
                    bad.append(f"{page.relative_to(ROOT)}: link to a missing file {target}")
                continue
            if rel not in page_anchors:
                bad.append(f"{page.relative_to(ROOT)}: link to a missing page {target}")
            elif anchor and anchor not in page_anchors[rel]:
                bad.append(f"{page.relative_to(ROOT)}: {target or page.name} has no heading #{anchor}")
    assert not bad, "links inside docs/ that do not resolve:\n" + "\n".join(bad)


def test_no_citation_of_documents_outside_the_repository(texts):
    bad = [
        f"{where(path, low, m.start())}: {m.group(0)!r}"
        for path, low in ((p, t.lower()) for p, t in texts.items())
        for pattern in STALE
        for m in pattern.finditer(low)
    ]
    assert not bad, "cite docs/<page>.md#<heading> instead of:\n" + "\n".join(bad)
