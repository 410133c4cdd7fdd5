"""llama.cpp's test assets (real tokenizers of released models, chat templates) from the llama-cpp-python sdist.

The hub is never used: `pip download` fetches the sdist of llama-cpp-python from PyPI (about 77 MB, ~15 s) and only
`vendor/llama.cpp/models/` is extracted (ggml-vocab-*.gguf with their .inp/.out vectors, about 90 MB, and
templates/*.jinja), into a cache outside the repository:

    make real-artifacts                     # or: python -m tests.llama_cpp_assets (these parts only)

Tests that need them skip, printing that command, when they are absent. LORAKIT_LLAMA_CPP_MODELS may point at an
existing `models/` folder (e.g. a llama.cpp checkout) instead. The cache is tests/real/artifacts.py's (one copy of
the sdist's parts for the template tests and tests/real/; LORAKIT_TEST_ARTIFACTS moves both). Converting a GGUF
vocabulary to a transformers tokenizer takes up to ~30 s for the 128k-150k vocabularies on 2 cores, so each is
converted once and kept beside the assets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
MEMBER = "vendor/llama.cpp/models/"
FETCH = "make real-artifacts   (python -m tests.llama_cpp_assets: pip downloads the llama-cpp-python sdist, ~77 MB)"


def cache_root() -> Path:
    from tests.real import artifacts

    return artifacts.sdist_root()


def models_dir() -> Path | None:
    """The folder holding ggml-vocab-*.gguf and templates/, or None when not fetched."""
    override = os.environ.get("LORAKIT_LLAMA_CPP_MODELS")
    candidates = [Path(override)] if override else []
    candidates.append(cache_root() / "models")
    for folder in candidates:
        if (folder / "ggml-vocab-llama-bpe.gguf").is_file():
            return folder
    return None


def fetch(root: Path | None = None) -> Path:
    """pip download the sdist and extract models/ (vocabularies and templates) under `root`."""
    if root is None:
        from tests.real import artifacts

        artifacts.fetch_sdist_parts()
        return artifacts.sdist_root() / "models"
    target = root / "models"
    if (target / "ggml-vocab-llama-bpe.gguf").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={VERSION}", "-d", tmp], check=True)
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tempfile.mkdtemp(dir=root.parent if root.parent.exists() else None))
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                _, _, inner = member.name.partition("/")
                if not inner.startswith(MEMBER) or not member.isfile():
                    continue
                rel = inner[len(MEMBER):]
                if not (rel.startswith("ggml-vocab-") or rel.startswith("templates/")) or ".." in rel:
                    continue
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    root.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def vocab_tokenizer(name: str):
    """A transformers tokenizer of ggml-vocab-<name>.gguf (converted once, then loaded from its saved folder)."""
    from transformers import AutoTokenizer

    models = models_dir()
    if models is None:
        return None
    gguf_path = models / f"ggml-vocab-{name}.gguf"
    if not gguf_path.is_file():
        return None
    saved = models.parent / "hf-tokenizers" / name
    if not (saved / "tokenizer.json").is_file():
        tokenizer = _convert(models, gguf_path)
        staging = saved.with_name(saved.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(saved, ignore_errors=True)
        staging.rename(saved)
    return AutoTokenizer.from_pretrained(saved)


def _convert(models: Path, gguf_path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(models, gguf_file=gguf_path.name)
    except Exception:
        # transformers reads the model config first and fails on some files (gemma4's per-layer head counts,
        # command-r's architecture); the tokenizer part of the GGUF converts fine on its own.
        from transformers import PreTrainedTokenizerFast
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

        architecture, tokenizer_dict, config = get_gguf_tokenizer(str(gguf_path))
        backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
        return PreTrainedTokenizerFast(tokenizer_object=backend,
                                       **{k: v for k, v in config.items() if v is not None and k != "chat_template"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help=f"where to put them (default {cache_root()})")
    args = parser.parse_args(argv)
    print(fetch(args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
