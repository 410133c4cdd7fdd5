"""What a fuzz case works with: a fresh folder per case (the current folder while it runs), good inputs to damage,
copies of a finished run and of a model, and a fingerprint of everything in it to prove nothing changed."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ..conftest import EXAMPLES


@dataclass(frozen=True)
class World:
    """Built once per session: the tiny model and a finished 2-step SFT run on it (never modified)."""

    model: Path
    run: Path


class Workspace:
    def __init__(self, root: Path, world: World, seed: str):
        self.root = root
        self.world = world
        self.rng = random.Random(seed)  # each case draws from its own seeded stream: order does not matter
        self.expected: tuple[str, ...] = ()  # fragments a case can only know once built (a seeded line number)

    @property
    def model(self) -> str:
        return str(self.world.model)

    # --- files -----------------------------------------------------------------------------------------------

    def write(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return name

    def chat_lines(self, n: int = 6) -> list[str]:
        lines = (EXAMPLES / "chat-messages.jsonl").read_text().splitlines()
        return lines[:n]

    def pref_lines(self, n: int = 6) -> list[str]:
        return (EXAMPLES / "prefs.jsonl").read_text().splitlines()[:n]

    def chats(self, name: str = "chats.jsonl", n: int = 6) -> str:
        return self.write(name, "\n".join(self.chat_lines(n)) + "\n")

    def prefs(self, name: str = "prefs.jsonl", n: int = 6) -> str:
        return self.write(name, "\n".join(self.pref_lines(n)) + "\n")

    def yaml(self, name: str, data) -> str:
        import yaml

        return self.write(name, yaml.safe_dump(data, sort_keys=False))

    # --- outputs of lorakit ------------------------------------------------------------------------------------

    def copy_run(self, name: str = "sftrun") -> Path:
        shutil.copytree(self.world.run, self.root / name, symlinks=True)
        return self.root / name

    def partial(self, name: str = "sftrun") -> Path:
        """The run as an interrupted one: `.NAME.partial` with its recipe, a running manifest, metrics, checkpoints."""
        staging = self.root / f".{name}.partial"
        staging.mkdir()
        for item in ("lorakit.yaml", "metrics.jsonl"):
            shutil.copy2(self.world.run / item, staging / item)
        manifest = json.loads((self.world.run / "manifest.json").read_text())
        manifest["status"] = "running"
        manifest.pop("summary", None)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.copytree(self.world.run / "checkpoints", staging / "checkpoints")
        return staging

    def run_recipe(self, name: str = "recipe.yaml", output_dir: str = "sftrun", **changes) -> str:
        """The finished run's own recipe (what a resume must be given), pointed at `output_dir`."""
        import yaml

        data = yaml.safe_load((self.world.run / "lorakit.yaml").read_text())
        data["output_dir"] = output_dir
        for key, value in changes.items():
            section, _, field = key.partition("__")
            data[section][field] = value
        return self.yaml(name, data)

    def copy_model(self, name: str = "model", manifest: dict | None = None) -> Path:
        """A model folder (a merged model when it has a manifest)."""
        target = self.root / name
        shutil.copytree(self.world.model, target)
        if manifest is not None:
            (target / "manifest.json").write_text(json.dumps(manifest))
        return target


def fingerprint(root: Path) -> dict[str, str]:
    """Every entry under `root`: a regular file by its content hash, anything else by its kind (a FIFO is never
    opened, a symbolic link never followed)."""
    entries: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                entries[rel] = "link -> " + os.readlink(path)
            elif stat.S_ISDIR(mode):
                entries[rel] = "dir"
            elif stat.S_ISREG(mode):
                entries[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                entries[rel] = f"special {stat.S_IFMT(mode)}"
    return entries


def describe_changes(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added[:6]}, removed {removed[:6]}, changed {changed[:6]}"
