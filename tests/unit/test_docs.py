"""The README stays short and the docs hold together: links resolve as GitHub resolves them, every page is reachable
from the index and says what it is for, and every README block is either run by the walk test or marked as not run.
(The walk itself: tests/integration/test_readme_walk.py.)"""

from pathlib import Path

import pytest

from ..conftest import REPO
from ..markdown import anchors, github_anchor, links, scan

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README_LIMIT = 15 * 1024


def test_the_readme_is_one_to_three_screens():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes: keep it under {README_LIMIT:,}, the rest in docs/"


def test_github_anchors_are_computed_as_github_does():
    assert github_anchor("Real models: GGUF sources, SmolLM2, real tokenizers") == \
        "real-models-gguf-sources-smollm2-real-tokenizers"
    assert github_anchor("vLLM's LoRA loader") == "vllms-lora-loader"
    assert github_anchor("On a GPU: `bench/gpu_check.py`") == "on-a-gpu-benchgpu_checkpy"
    assert github_anchor("bitsandbytes, AWQ, GPTQ") == "bitsandbytes-awq-gptq"
    assert github_anchor("[`lorakit sft`](docs/sft.md) -> out") == "lorakit-sft---out"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for line, target in links(page):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}:{line}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{page.name}:{line}: {target} (no heading #{anchor} in {file.name})")
        elif not str(file).startswith(str(REPO)):
            broken.append(f"{page.name}:{line}: {target} (outside the repository)")
    assert not broken, "\n".join(broken)


def test_a_broken_link_or_anchor_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n## A section\n\n[ok](#a-section) [gone](missing.md) [bad](#nowhere)\n"
                    "`[in code](missing.md)`\n\n```\n[in a block](missing.md)\n```\n")
    assert links(page) == [(5, "#a-section"), (5, "missing.md"), (5, "#nowhere")]
    assert anchors(page) == {"page", "a-section"}


def test_every_docs_page_is_in_the_index_and_opens_with_what_it_is_for():
    index = {target.partition("#")[0] for _, target in links(DOCS / "README.md")}
    assert {p.name for p in PAGES if p.name != "README.md"} <= index, "docs/README.md must link every page"
    for page in PAGES:
        prose, _ = scan(page)
        text = [line for line in prose if line.strip()]
        assert text[0].startswith("# "), f"{page.name} starts with its title"
        assert not text[1].startswith(("#", "-", "|", "<!--")), \
            f"{page.name}: the title is followed by a sentence on what the page is for"


def test_every_readme_block_is_tagged_and_every_mark_gives_a_reason():
    _, blocks = scan(README)
    assert blocks, "the README has its set-up and quick-start blocks"
    for block in blocks:
        assert block.info, f"README.md:{block.line}: give the block a language (```bash for commands)"
        if block.mark:
            assert block.is_shell and len(block.reason) > 10, f"README.md:{block.line}: say why it is not run"
    run = [b for b in blocks if b.is_shell and b.mark != "not run"]
    assert any("lorakit sft" in b.code for b in run) and any("lorakit quantize" in b.code for b in run)


def test_the_setup_commands_are_the_makefile_targets():
    _, blocks = scan(README)
    setup = next(b for b in blocks if "make demo" in b.code)
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in setup.code and f"\n{target}:" in makefile
