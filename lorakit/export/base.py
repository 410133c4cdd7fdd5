"""`lorakit export-base`: put a built-in base model (builtin:tiny-llama) in a folder of the user's choice.

A run on a hub model or a local folder names that base in adapter_config.json, and any server loads it from there.
A built-in base exists only as lorakit's build in its cache (LORAKIT_CACHE), which a server on another machine, or
in another container, does not have: this command writes the same files anywhere, for `--base DIR`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lorakit.errors import ConfigError, RunError
from lorakit.runs import MANIFEST_FILE, RECIPE_FILE, atomic_dir, now, package_versions, read_run, write_json_atomic
from lorakit.tiny import BUILTIN_PREFIX


def builtin_of(source: str) -> str:
    """`builtin:NAME` as given, or the built-in base of a run folder."""
    if source.startswith(BUILTIN_PREFIX):
        return source
    path = Path(source)
    if (path / RECIPE_FILE).is_file():
        name = read_run(path).manifest["base_model"]["name"]
        if not name.startswith(BUILTIN_PREFIX):
            raise RunError(f"the base of {path} is {name}, which a server loads as it is",
                           hint=f"lorakit serve-info {path} prints the commands")
        return name
    raise ConfigError(f"{source} is neither a built-in model (builtin:NAME) nor a run folder",
                      hint="e.g. lorakit export-base builtin:tiny-llama bases/tiny-llama")


def export_base(source: str, target: str | Path, force: bool = False) -> tuple[str, Path]:
    """Copy the built-in base (built on first use) into `target`; returns (name, target)."""
    from lorakit.tiny import resolve_builtin

    name = builtin_of(source)
    built = resolve_builtin(name)
    target = Path(target)
    with atomic_dir(target, force=force, what="base folder", inputs=[built]) as staging:
        for file in sorted(built.iterdir()):
            if file.is_file():
                shutil.copy2(file, staging / file.name)
        write_json_atomic(staging / MANIFEST_FILE, {
            "stage": "base", "status": "complete", "created_at": now(), "name": name, "copied_from": str(built),
            "files": sorted(f.name for f in built.iterdir() if f.is_file()), "versions": package_versions(),
        })
    return name, target
