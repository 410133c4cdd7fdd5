"""generation_config.json for everything lorakit writes that a server may load: runs and merged models alike.

Servers and `generate()` stop on the eos list of generation_config.json, not on the chat template. Base models list
only their EOS token (`<|endoftext|>`), while a chat model ends its turn with another one (`<|im_end|>`,
`<|eot_id|>`): without it in the list a reply runs on to max_tokens. So every run folder and merged model carries a
generation config whose eos list holds both (`lorakit.chat_template.Stops.ids`), and the base's other defaults.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.chat_template import Stops, eos_ids

GENERATION_CONFIG = "generation_config.json"


def write_generation_config(model, tokenizer, folder: Path, stops: Stops | None = None) -> list[int]:
    """Write `model`'s generation config (the base's, as loaded) with the run's stop tokens; returns the eos list.

    `stops`: the ones the run trained with; by default those of `tokenizer` on the model's own generation config."""
    from transformers import GenerationConfig

    config = getattr(model, "generation_config", None)
    config = GenerationConfig.from_dict(config.to_dict()) if config is not None else GenerationConfig()
    if stops is None:
        stops = Stops.of(tokenizer, config.eos_token_id)
    config.eos_token_id = stops.ids + [i for i in eos_ids(config.eos_token_id) if i not in stops.ids]  # base's kept
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None and config.bos_token_id is None:
        config.bos_token_id = tokenizer.bos_token_id
    config.save_pretrained(str(folder))
    return list(config.eos_token_id)
