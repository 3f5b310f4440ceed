"""The documentation holds together: README.md is a front page, every relative link in it
and in docs/ reaches a file that exists (and a heading of that file, for an `#anchor`),
and every page in docs/ is linked from README.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 30_000

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) or [text](target "title"); an image's ![alt](target) matches too, and
# must reach its file like any link.
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of a markdown file outside fenced code blocks, numbered from 1."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text as rendered, lowercase, with spaces as
    '-' and every other character that is not a letter, digit, '-' or '_' dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "")
    text = re.sub(r"(\*\*|__|\*|~~)", "", text)  # emphasis markers
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 ... for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        if slug in seen:
            seen[slug] += 1
            found.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            found.add(slug)
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in prose_lines(path):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if re.match(r"^(https?:|mailto:)", target, re.IGNORECASE):
                continue
            links.append((number, target))
    return links


def test_the_readme_is_a_front_page() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes, more than {README_MAX_BYTES:,}: "
        "move the detail into a page under docs/ and link to it"
    )


def test_every_relative_link_reaches_a_file_and_a_heading() -> None:
    broken = []
    for page in pages():
        name = page.relative_to(ROOT)
        for number, target in relative_links(page):
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{name}:{number}: ({target}): no file {file_part}")
                continue
            if not anchor:
                continue
            if dest.suffix != ".md":
                broken.append(
                    f"{name}:{number}: ({target}): an anchor into a file that is not markdown"
                )
            elif anchor not in anchors(dest):
                broken.append(
                    f"{name}:{number}: ({target}): no heading in {dest.relative_to(ROOT)} has the anchor #{anchor}"
                )
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = set()
    for _, target in relative_links(README):
        file_part = target.partition("#")[0]
        if file_part:
            linked.add((README.parent / file_part).resolve())
    docs = sorted(DOCS.glob("*.md"))
    assert docs, "docs/ holds no page"
    missing = [str(doc.relative_to(ROOT)) for doc in docs if doc.resolve() not in linked]
    assert not missing, "README.md links to none of: " + ", ".join(missing)


def test_the_slug_rules_are_githubs() -> None:
    assert (
        github_slug("Hibernation: sessions outlive their CLI")
        == "hibernation-sessions-outlive-their-cli"
    )
    assert github_slug("HTTP API (wire protocol 1.0)") == "http-api-wire-protocol-10"
    assert (
        github_slug("The browser, with `@agent-webkit/core`") == "the-browser-with-agent-webkitcore"
    )
    assert github_slug("Drain (deploys)") == "drain-deploys"
    assert github_slug("What newer clients use: echo, history, snapshots, resume and fork") == (
        "what-newer-clients-use-echo-history-snapshots-resume-and-fork"
    )
