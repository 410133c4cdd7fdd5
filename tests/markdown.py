"""Reading the project's Markdown as GitHub renders it: headings and their anchors, links, fenced blocks, and the
README's marks for blocks that are not run (tests/unit/test_docs.py, tests/integration/test_readme_walk.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# The mark above a README block: `<!-- not run: REASON -->` (illustrative) or `<!-- expected to fail: REASON -->`.
MARK = re.compile(r"^<!--\s*(not run|expected to fail):\s*(.+?)\s*-->$")
SHELL = {"bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int          # 1-based line of the opening fence
    info: str          # the fence's info string ("bash", "yaml", "")
    code: str
    mark: str | None   # "not run" | "expected to fail" | None
    reason: str | None

    @property
    def is_shell(self) -> bool:
        return self.info.split()[0].lower() in SHELL if self.info.strip() else False


def scan(path: Path) -> tuple[list[str], list[Block]]:
    """The file's lines outside fenced blocks (blocks blanked, so line numbers hold) and its fenced blocks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    prose, blocks = [], []
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            prose.append(lines[i])
            i += 1
            continue
        fence, start = opened["fence"], i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and not lines[i].strip().strip(fence[0])):
            body.append(lines[i])
            i += 1
        mark = MARK.match(lines[start - 1].strip()) if start else None  # the mark sits right above the fence
        blocks.append(Block(path, start + 1, opened["info"].strip(), "\n".join(body) + "\n",
                            mark[1] if mark else None, mark[2] if mark else None))
        prose.extend([""] * (i - start + 1))
        i += 1
    return prose, blocks


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: its text without markup, lower case, punctuation other than - and _ dropped,
    spaces as hyphens (github-slugger)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, numbered as GitHub numbers repeats (name, name-1, name-2...)."""
    prose, _ = scan(path)
    seen: dict[str, int] = {}
    found = set()
    for line in prose:
        heading = HEADING.match(line)
        if not heading:
            continue
        slug = github_anchor(heading[2])
        count = seen.get(slug, 0)
        found.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image outside code."""
    prose, _ = scan(path)
    found = []
    for number, line in enumerate(prose, 1):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((number, match[1]))
    return found
