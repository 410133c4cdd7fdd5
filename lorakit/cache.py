"""Where lorakit keeps what it builds or converts for reuse: built-in models, tokenized data, converted models.

`LORAKIT_CACHE` moves it (the tests point it at a temporary folder); the default is ~/.cache/lorakit.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("LORAKIT_CACHE", Path.home() / ".cache" / "lorakit"))
