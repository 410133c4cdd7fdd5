"""The environment lorakit creates and manages for llm-compressor (GPTQ and AWQ calibration).

llm-compressor 0.14 pins transformers<=5.17 and compressed-tensors==0.19, lorakit needs newer ones, so the two cannot
share an environment. On first use lorakit creates a virtual environment under its cache (LORAKIT_CACHE/envs/...),
layered over lorakit's own packages through a .pth file: the pinned packages below are installed into it and shadow
lorakit's copies, while torch (CUDA or CPU, whatever lorakit runs on), numpy, datasets and the rest are reused, so the
environment costs ~180 MB and a minute or two instead of another torch. It is created once (a lock keeps two commands
from building it together, a marker file says it is whole), its location is printed, and `lorakit env` reports it.
Calibration runs in it as a subprocess (lorakit/export/llmcompressor_job.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from lorakit.cache import cache_dir
from lorakit.console import err, info
from lorakit.errors import ModelError, ResourceError

# The versions the environment pins (llm-compressor 0.14.0.1's own constraints: transformers>=5.15,<=5.17,
# compressed-tensors==0.19.0, torch>=2.10,<=2.14).
PINS = ("llmcompressor==0.14.0.1", "transformers==5.17.0", "compressed-tensors==0.19.0")
TORCH_RANGE = ((2, 10), (2, 14))
ENV_NAME = f"llmcompressor-0.14.0.1-py{sys.version_info.major}{sys.version_info.minor}"  # a venv is tied to its python
READY = ".lorakit-ready"
JOB_SCRIPT = Path(__file__).with_name("llmcompressor_job.py")


def env_dir() -> Path:
    return cache_dir() / "envs" / ENV_NAME


def env_python(folder: Path | None = None) -> Path:
    return (folder or env_dir()) / "bin" / "python"


def is_ready(folder: Path | None = None) -> bool:
    folder = folder or env_dir()
    return (folder / READY).is_file() and env_python(folder).is_file()


TOOL_NAME = "llm-compressor"  # its name in `lorakit env` and `lorakit env --prefetch`


def status() -> dict[str, Any]:
    """What `lorakit env` reports about the environment (lorakit.env.MANAGED_TOOLS)."""
    folder = env_dir()
    ready = is_ready(folder)
    versions = _read_marker(folder).get("versions", {}) if ready else {}
    return {"tool": TOOL_NAME, "source": f"{', '.join(PINS)} (PyPI), over lorakit's own torch",
            "location": str(folder), "installed": ready,
            "versions": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or None,
            "fetch": None if ready else f"lorakit env --prefetch {TOOL_NAME}"}


def _read_marker(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / READY).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_torch() -> None:
    """llm-compressor runs on lorakit's torch: it must be in the range llm-compressor accepts."""
    from importlib.metadata import version

    found = version("torch")
    major_minor = tuple(int(p) for p in found.split("+")[0].split(".")[:2])
    if not TORCH_RANGE[0] <= major_minor <= TORCH_RANGE[1]:
        raise ResourceError(f"GPTQ/AWQ run llm-compressor on lorakit's torch {found}, outside the torch>=2.10,<=2.14 "
                            "that llm-compressor 0.14 accepts", hint="use --method rtn (no calibration), or a torch "
                            "in that range")


def site_paths() -> list[str]:
    """lorakit's own package folders, in the order this interpreter searches them."""
    return [p for p in sys.path if p and Path(p).is_dir() and Path(p).name in ("site-packages", "dist-packages")]


def ensure_env() -> Path:
    """The environment's python, created on first use; its location is printed either way."""
    from filelock import FileLock

    folder = env_dir()
    check_torch()
    if is_ready(folder):
        relayer(folder)
        info(f"llm-compressor runs in lorakit's environment {folder}")
        return env_python(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_ready(folder):
            return env_python(folder)
        info(f"Creating the environment for llm-compressor in {folder} (once; about 180 MB: {', '.join(PINS)}, "
             "over lorakit's own torch)")
        shutil.rmtree(folder, ignore_errors=True)  # a half-built one from an interrupted first try
        try:
            _build(folder)
        except (OSError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(folder, ignore_errors=True)
            detail = getattr(exc, "stderr", None) or str(exc)
            raise ResourceError(f"could not create llm-compressor's environment in {folder}: "
                                f"{str(detail).strip().splitlines()[-1] if str(detail).strip() else exc}",
                                hint="it needs the package index (pip install); --method rtn needs none") from None
    info(f"llm-compressor runs in lorakit's environment {folder}")
    return env_python(folder)


def relayer(folder: Path) -> None:
    """Point the environment at the lorakit that runs now (another venv, a moved install): the .pth is rewritten,
    the pinned packages stay."""
    marker = _read_marker(folder)
    if marker.get("layered_over") == site_paths():
        return
    from filelock import FileLock

    with FileLock(str(folder) + ".lock"):
        _write_layer(folder)
        marker["layered_over"] = site_paths()
        (folder / READY).write_text(json.dumps(marker, indent=1))


def _write_layer(folder: Path) -> None:
    python = env_python(folder)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # after the environment's own site-packages: the pinned copies win, everything else is lorakit's
    Path(purelib, "zz_lorakit_packages.pth").write_text("\n".join(site_paths()) + "\n")


def _build(folder: Path) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(folder)], check=True, capture_output=True, text=True)
    python = env_python(folder)
    _write_layer(folder)
    with err.status(f"pip install {' '.join(PINS)} ..."):
        subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *PINS], check=True,
                       capture_output=True, text=True)
    probe = ("import json, importlib.metadata as m; print(json.dumps({n: m.version(n) for n in "
             "('llmcompressor', 'transformers', 'compressed-tensors', 'torch')}))")
    versions = json.loads(subprocess.run([str(python), "-c", probe], check=True, capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1])
    (folder / READY).write_text(json.dumps({"versions": versions, "pins": list(PINS), "layered_over": site_paths()},
                                           indent=1))


def run_job(job: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run one calibration job in the environment; its result line, or ModelError with the tail of its log."""
    python = ensure_env()
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job))
    log = work / "llmcompressor.log"
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # lorakit's own modules must not shadow the pinned transformers
    with open(log, "w") as handle:
        code = subprocess.run([str(python), str(JOB_SCRIPT), str(job_file)], stdout=handle, stderr=subprocess.STDOUT,
                              env=env, cwd=str(work)).returncode
    lines = log.read_text(errors="replace").strip().splitlines()
    if code != 0 or not lines:
        tail = next((line for line in reversed(lines) if line.strip() and not line.startswith(" ")), "no output")
        raise ModelError(f"llm-compressor ({job['method']}) failed: {tail.strip()[:300]}",
                         hint=f"its full log was {log} (removed with the unfinished export); try --method rtn")
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise ModelError(f"llm-compressor ({job['method']}) ended without its result line",
                         hint="try --method rtn") from None
