"""What a report page holds, read back from its HTML (as written, or as a browser's DOM): its plots, the lines drawn in
each, table cells, and anything that would reach outside the page. Shared by the report tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest


@dataclass
class PageFacts:
    plots: dict[str, int] = field(default_factory=dict)  # plot title -> how many <path> it draws
    cells: list[str] = field(default_factory=list)  # every <td>/<th> text
    stages: list[list[str]] = field(default_factory=list)  # lineage chains, as stage labels
    external: list[str] = field(default_factory=list)  # src/href that leave the page
    scripts: int = 0

    def cell_numbers(self) -> set[str]:
        return {c.strip() for c in self.cells}


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.facts = PageFacts()
        self.plot: str | None = None
        self.cell: list[str] | None = None
        self.chain: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if value.startswith(("http:", "https:", "//")):
                self.facts.external.append(value)
        if tag == "link":
            self.facts.external.append(attrs.get("href") or "link")
        if tag == "script":
            self.facts.scripts += 1
        if tag == "figure" and "data-plot" in attrs:
            self.plot = attrs["data-plot"]
            self.facts.plots[self.plot] = 0
        if tag == "path" and self.plot is not None:
            self.facts.plots[self.plot] += 1
        if tag in ("td", "th"):
            self.cell = []
        if tag == "div" and attrs.get("class") == "chain":
            self.chain = []
            self.facts.stages.append(self.chain)
        if tag == "div" and "data-stage" in attrs and self.chain is not None:
            self.chain.append(attrs["data-stage"])

    def handle_endtag(self, tag):
        if tag == "figure":
            self.plot = None
        if tag in ("td", "th") and self.cell is not None:
            self.facts.cells.append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def read_page(text: str) -> PageFacts:
    reader = _Reader()
    reader.feed(text)
    return reader.facts


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


def chromium() -> str:
    """The headless browser the render tests use, or a skip that says how to get it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium here: `apt-get install chromium` (Debian/Ubuntu) runs the browser render tests")


@dataclass
class Rendered:
    dom: str  # the page as the browser built it
    console: list[str]  # every console message the page produced (errors included)
    screenshot: Path


def render(page: Path, screenshot: Path, width: int = 1240, height: int = 2400) -> Rendered:
    """Open `page` in headless Chromium twice: once for a screenshot, once for its DOM; collect console messages."""
    binary = chromium()
    console = []
    outputs = []
    for mode in (f"--screenshot={screenshot}", "--dump-dom"):
        with tempfile.TemporaryDirectory() as profile:
            done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                   f"--window-size={width},{height}", mode, page.resolve().as_uri()],
                                  capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        console += [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
        outputs.append(done.stdout)
    return Rendered(outputs[1], console, screenshot)
