"""Papers are cited by short title and method definitions live in the repository.

No "seed 00x" labels and no paths outside the repository (``shared/``, ``/work/``, "methods.md §n")
in the package, docs, README, tutorials, benchmarks or tests; every ``docs/methods.md#anchor``
link resolves; every short title cited in a ``References:`` line is listed in docs/references.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("mmlens", "docs", "README.md", "tutorials", "benchmarks", "tests")
SUFFIXES = {".py", ".md", ".ipynb", ".txt", ".toml", ".cfg", ".yaml", ".yml"}
FORBIDDEN = {
    "seed label": re.compile(r"\bseeds?[ _-]?0\d\d\b", re.IGNORECASE),
    "methods.md section outside the repo": re.compile(r"methods\.md\s*§"),
    "path outside the repo": re.compile(r"(?<![\w.])(?:\.\./)*shared/|/work/"),
}
METHODS_LINK = re.compile(r"methods\.md#([\w-]+)")
QUOTED_TITLE = re.compile(r"[\"“]([A-Z][^\"”]{3,}?)[\"”]")


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p for p in candidates if p.suffix in SUFFIXES and p.resolve() != Path(__file__).resolve()]
    return files


def violations(files: list[Path]) -> list[str]:
    """``path:line: what`` for every forbidden citation or outside path."""
    found = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{n}: {what}: {line.strip()[:120]}")
    return found


def anchors(markdown: str) -> set[str]:
    """Explicit ``<a id>`` anchors and GitHub heading slugs of a Markdown file."""
    ids = set(re.findall(r'<a id="([\w-]+)"', markdown))
    for heading in re.findall(r"^#+\s+(.+)$", markdown, flags=re.MULTILINE):
        ids.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return ids


def test_scanner_finds_planted_violations(tmp_path: Path) -> None:
    planted = tmp_path / "bad.py"
    planted.write_text('"""See seed 002 §3 and methods.md §2, ../shared/seeds/ and /work/x."""\nok = 1\n')
    found = violations([planted])
    assert [v.split(": ")[1] for v in found] == ["seed label", "methods.md section outside the repo", "path outside the repo"]
    assert not violations([ROOT / "docs" / "references.md"])


def test_no_seed_labels_or_paths_outside_the_repo() -> None:
    found = violations(scanned_files())
    assert not found, "cite papers by short title (docs/references.md) and methods by docs/methods.md#anchor:\n" + "\n".join(found)


def test_methods_links_resolve() -> None:
    known = anchors((ROOT / "docs" / "methods.md").read_text(encoding="utf-8"))
    assert {"attention-knockout", "saliency-flow", "pruning", "flops"} <= known
    broken = [
        f"{path.relative_to(ROOT)}:{n}: #{anchor}"
        for path in scanned_files()
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        for anchor in METHODS_LINK.findall(line)
        if anchor not in known
    ]
    assert not broken, f"no such anchor in docs/methods.md (have {sorted(known)}):\n" + "\n".join(broken)


@pytest.mark.parametrize("title", ["Cross-modal Information Flow", "From Redundancy to Relevance", "Unraveling the Shift"])
def test_references_list_the_papers(title: str) -> None:
    references = (ROOT / "docs" / "references.md").read_text(encoding="utf-8")
    assert f'**"{title}"**' in references


def test_cited_short_titles_are_in_the_references() -> None:
    references = (ROOT / "docs" / "references.md").read_text(encoding="utf-8")
    titles = set(re.findall(r'\*\*"([^"]+)"\*\*|\| "([^"]+)" \|', references))
    known = {t for pair in titles for t in pair if t}
    unknown = [
        f"{path.relative_to(ROOT)}:{n}: {title!r}"
        for path in scanned_files()
        if path.suffix == ".py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.strip().startswith("References:")
        for title in QUOTED_TITLE.findall(line)
        if title not in known
    ]
    assert not unknown, f"short titles not in docs/references.md (known: {sorted(known)}):\n" + "\n".join(unknown)
