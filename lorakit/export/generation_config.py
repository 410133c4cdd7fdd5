"""generation_config.json for everything lorakit writes that a server may load: runs and merged models alike.

Servers and `generate()` stop on the eos list of generation_config.json, not on the chat template. Base models list
only their EOS token (`<|endoftext|>`), while a chat model ends its turn with another one (`<|im_end|>`,
`<|eot_id|>`): without it in the list a reply runs on to max_tokens. So every run folder and merged model carries a
generation config whose eos list holds both (`lorakit.chat_template.stop_token_ids`), and the base's other defaults.
"""

from __future__ import annotations

from pathlib import Path

GENERATION_CONFIG = "generation_config.json"


def write_generation_config(model, tokenizer, folder: Path) -> list[int]:
    """Write `model`'s generation config (the base's, as loaded) with the run's stop tokens; returns the eos list."""
    from transformers import GenerationConfig

    from lorakit.chat_template import stop_token_ids

    config = getattr(model, "generation_config", None)
    config = GenerationConfig.from_dict(config.to_dict()) if config is not None else GenerationConfig()
    config.eos_token_id = stop_token_ids(tokenizer, also=config.eos_token_id)  # the base's own stops kept
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None and config.bos_token_id is None:
        config.bos_token_id = tokenizer.bos_token_id
    config.save_pretrained(str(folder))
    return list(config.eos_token_id)
