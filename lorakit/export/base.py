"""`lorakit export-base`: put a base that exists only in lorakit's cache in a folder of the user's choice.

A run on a hub model or a local folder names that base in adapter_config.json, and any server loads it from there.
A built-in base (builtin:tiny-llama) and a base unpacked from a GGUF file exist only in lorakit's cache
(LORAKIT_CACHE), which a server on another machine, or in another container, does not have: this command writes
the same files anywhere, for `--base DIR`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lorakit.errors import ConfigError, RunError
from lorakit.io import atomic_dir
from lorakit.model import base_source_of
from lorakit.outputs import BaseCopyManifest, hold_output, now, package_versions, read_run, write_manifest
from lorakit.outputs.layout import MANIFEST_FILE, RECIPE_FILE
from lorakit.tiny import BUILTIN_PREFIX, resolve_builtin


def cached_base_of(source: str) -> tuple[str, Path]:
    """(name, cached folder) of `builtin:NAME` as given, or of the cache-only base of a run folder."""
    if source.startswith(BUILTIN_PREFIX):
        return source, resolve_builtin(source)
    path = Path(source)
    if (path / RECIPE_FILE).is_file():
        run = read_run(path)
        base = run.manifest.base_model
        assert base is not None  # read_run checked it
        name = base.name
        if name.startswith(BUILTIN_PREFIX):
            return name, resolve_builtin(name)
        if base.gguf:
            return name, Path(base_source_of(run).location)  # the unpacked folder (unpacked again if gone)
        raise RunError(f"the base of {path} is {name}, which a server loads as it is",
                       hint=f"lorakit serve-info {path} prints the commands")
    raise ConfigError(f"{source} is neither a built-in model (builtin:NAME) nor a run folder",
                      hint="e.g. lorakit export-base builtin:tiny-llama bases/tiny-llama")


def export_base(source: str, target: str | Path, force: bool = False) -> tuple[str, Path]:
    """Copy the cached base (built or unpacked on first use) into `target`; returns (name, target)."""
    target = Path(target)
    with hold_output(target, "lorakit export-base"):
        name, built = cached_base_of(source)
        with atomic_dir(target, force=force, what="base folder", inputs=[built]) as staging:
            files = sorted(f for f in built.iterdir() if f.is_file() and f.name != MANIFEST_FILE)
            for file in files:
                shutil.copy2(file, staging / file.name)
            write_manifest(staging, BaseCopyManifest(
                stage="base", status="complete", created_at=now(), name=name, copied_from=str(built),
                files=[f.name for f in files], versions=package_versions()))
    return name, target
