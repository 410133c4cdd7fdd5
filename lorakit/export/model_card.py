"""Model cards (README.md with Hugging Face metadata) for run folders and merged models."""

from __future__ import annotations

from pathlib import Path

from lorakit.io import write_text_atomic


def write_model_card(path: Path, base_model: str, tags: list[str], text: str, library_name: str | None = None) -> None:
    """A Hugging Face model card: the metadata PEFT (or transformers) already wrote there, kept and extended with
    lorakit's (tags once each), and lorakit's text in place of the library's empty template."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCard.load(path).data if path.is_file() else ModelCardData()
    data.base_model = base_model
    if library_name:
        data.library_name = library_name
    existing = [t for t in (data.tags or []) if not str(t).startswith("base_model:")]  # PEFT names its cache path
    data.tags = list(dict.fromkeys([*existing, *tags]))
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")
    write_text_atomic(path, str(card))
