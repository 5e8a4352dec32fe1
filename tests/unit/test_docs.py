"""Every citation of the project's docs resolves, and nothing cites the documents they replace.

Code and documentation cite sections as ``docs/<name>.md §N`` or ``§N.M``, also as lists on
the same line (``docs/rules.md §2, §6, §7``, ``§1–§2``).  Each cited file must exist under
``docs/`` and hold a heading with that number: ``## N.`` for §N, ``### N.M`` for §N.M.  A
section sign after another source on the line (``RFC 9112 §6``) is that source's, not the
docs'.  The product rules and the architecture live in ``docs/``, so no file may cite the
former outside specifications by name any more.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXTENSIONS = (".py", ".lua", ".toml", ".md")
SKIPPED_DIRS = frozenset(
    {".git", ".venv", "venv", ".tox", ".nox", "node_modules", "__pycache__", ".hypothesis"}
)

DOC = re.compile(r"docs/([A-Za-z0-9_-]+)\.md")
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)?)")
# Section signs after one of these belong to it, not to the docs mention before it.
OTHER_SOURCE = re.compile(r"\bRFC\s*\d+")
HEADING = re.compile(r"^(?:##\s+(\d+)\.|###\s+(\d+\.\d+))(?:\s|$)")
OUTSIDE = re.compile(r"\b(?:SPEC|DESIGN)(?:\.md)?\s*§|\b(?:SPEC|DESIGN)\.md\b")

RULES_SECTIONS = ["1", "1.1", "1.2", "2", "3", "4", "5", "6", "7"]
ARCHITECTURE_SECTIONS = [str(n) for n in range(1, 11)]


def citations(line: str) -> Iterator[tuple[str, str | None]]:
    """``(doc name, section)`` for each citation on ``line``; section None: the file only."""
    mentions = list(DOC.finditer(line))
    for i, mention in enumerate(mentions):
        end = mentions[i + 1].start() if i + 1 < len(mentions) else len(line)
        segment = line[mention.end() : end]
        other = OTHER_SOURCE.search(segment)
        if other is not None:
            segment = segment[: other.start()]
        sections = SECTION.findall(segment)
        if not sections:
            yield mention.group(1), None
        for section in sections:
            yield mention.group(1), section


def headings(markdown: str) -> list[str]:
    """The section numbers of a document's ``## N.`` and ``### N.M`` headings, in order."""
    found: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            found.append(match.group(1) or match.group(2))
    return found


def problems(files: Iterable[tuple[str, str]], docs: Mapping[str, Iterable[str]]) -> list[str]:
    """What does not resolve, as ``where: why``; ``files`` are (name, text) pairs."""
    sections = {name: set(numbers) for name, numbers in docs.items()}
    found = []
    for name, text in files:
        for number, line in enumerate(text.splitlines(), 1):
            for doc, section in citations(line):
                if doc not in sections:
                    found.append(f"{name}:{number}: docs/{doc}.md does not exist")
                elif section is not None and section not in sections[doc]:
                    found.append(f"{name}:{number}: docs/{doc}.md has no section {section}")
    return found


def outside_citations(files: Iterable[tuple[str, str]]) -> list[str]:
    return [
        f"{name}:{number}: {line.strip()}"
        for name, text in files
        for number, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]


def repository_files(*, include_docs: bool) -> Iterator[tuple[str, str]]:
    """(relative path, text) of every file with a scanned extension in the repository."""
    for directory, subdirectories, names in os.walk(ROOT):
        here = Path(directory)
        subdirectories[:] = [
            d
            for d in subdirectories
            if d not in SKIPPED_DIRS
            and not d.endswith(("_cache", ".egg-info"))
            and (include_docs or here / d != DOCS)
        ]
        for name in names:
            if name.endswith(EXTENSIONS):
                path = here / name
                yield str(path.relative_to(ROOT)), path.read_text("utf-8", errors="replace")


def docs_sections() -> dict[str, list[str]]:
    return {path.stem: headings(path.read_text("utf-8")) for path in DOCS.glob("*.md")}


# ---- the repository ------------------------------------------------------------------------


def test_docs_have_the_section_numbers_the_code_cites():
    sections = docs_sections()
    assert sections.get("rules") == RULES_SECTIONS
    assert [s for s in sections.get("architecture", []) if "." not in s] == ARCHITECTURE_SECTIONS


def test_every_docs_citation_names_an_existing_section():
    found = problems(repository_files(include_docs=False), docs_sections())
    assert not found, "unresolved docs citations:\n" + "\n".join(found)


def test_no_file_cites_the_outside_specifications():
    found = outside_citations(repository_files(include_docs=True))
    assert not found, "citations of documents outside the repository:\n" + "\n".join(found)


def test_the_scan_sees_code_and_docs_citations():
    """The walk finds what it is meant to check: a module known to cite docs/rules.md."""
    scanned = dict(repository_files(include_docs=False))
    assert "billing/rules/refunds.py" in scanned
    assert any(doc == "rules" for doc, _ in citations(scanned["billing/rules/refunds.py"]))
    assert not any(name.startswith(("docs/", ".venv/", ".git/")) for name in scanned)


# ---- the parser (examples are built, so that this file itself cites nothing) ---------------

DOCS_PREFIX = "docs" + "/"
SIGN = "§"


def cite(doc: str, *sections: str, sep: str = ", ") -> str:
    return f"{DOCS_PREFIX}{doc}.md " + sep.join(SIGN + s for s in sections)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"({cite('architecture', '10')})", [("architecture", "10")]),
        (cite("rules", "2", "6", "7"), [("rules", "2"), ("rules", "6"), ("rules", "7")]),
        (cite("rules", "1", "2", sep="–"), [("rules", "1"), ("rules", "2")]),
        (
            f"{cite('rules', '1.1')} expiry, {SIGN}6 refund window",
            [("rules", "1.1"), ("rules", "6")],
        ),
        (f"see {DOCS_PREFIX}rules.md", [("rules", None)]),
        (
            f"{cite('rules', '3')} and {cite('architecture', '4')}",
            [("rules", "3"), ("architecture", "4")],
        ),
        (f"{cite('architecture', '4')}; RFC 9112 {SIGN}6 and {SIGN}7", [("architecture", "4")]),
        (f"RFC 9110 {SIGN}7.6.1, an issue's {SIGN}2", []),
    ],
)
def test_citations_are_parsed(line, expected):
    assert list(citations(line)) == expected


def test_headings_are_numbered_sections_outside_code_fences():
    markdown = "\n".join(
        [
            "# Title",
            "## 1. First",
            "### 1.1 Sub",
            "### Worked example",
            "```",
            "## 9. inside a fence",
            "```",
            "## 10. Tenth",
            "## 11 no dot",
        ]
    )
    assert headings(markdown) == ["1", "1.1", "10"]


def test_a_bad_citation_is_reported():
    docs = {"rules": ["1", "1.1", "6"]}
    files = [
        ("good.py", f"# {cite('rules', '1.1', '6')}"),
        ("bad.py", f"x = 1\n# {cite('rules', '6', '9')}\n# {cite('nowhere', '1')}"),
    ]
    assert problems(files, docs) == [
        f"bad.py:2: {DOCS_PREFIX}rules.md has no section 9",
        f"bad.py:3: {DOCS_PREFIX}nowhere.md does not exist",
    ]
    # §1 is "## 1.", not the "### 1.1" below it, and §1.1 is not "## 1.".
    assert problems([("a.py", cite("rules", "1"))], {"rules": ["1.1"]})
    assert problems([("a.py", cite("rules", "1.1"))], {"rules": ["1"]})


@pytest.mark.parametrize(
    ("line", "cites_outside"),
    [
        ("per SP" + "EC " + SIGN + "3", True),
        ("DES" + "IGN" + SIGN + "10", True),
        ("see SP" + "EC.md beside it", True),
        ("the DES" + "IGN.md " + SIGN + "4 table", True),
        ("DESIGN_ROUTES = {...}", False),
        (cite("architecture", "6"), False),
    ],
)
def test_outside_citations_are_recognised(line, cites_outside):
    assert bool(outside_citations([("f.py", line)])) is cites_outside
