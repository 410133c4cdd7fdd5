"""Where a model's shape comes from (catalog, local folder or config.json, hub config) and a recipe's setup."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lorakit.errors import ConfigError, ModelError
from lorakit.vram.catalog import close_models, find_model
from lorakit.vram.estimate import Setup
from lorakit.vram.shapes import ModelShape, shape_from_config


def _from_config_file(path: Path, name: str) -> ModelShape:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as JSON ({exc})", hint="point at a transformers config.json")
    try:
        return shape_from_config(config, name)
    except KeyError as exc:
        raise ConfigError(f"{path}: missing field {exc.args[0]!r} needed to size the model",
                          hint="use a transformers config.json of a decoder model, or a catalog name") from None


def _builtin(name: str) -> ModelShape:
    from lorakit.tiny import BUILTIN_MODELS, BUILTIN_PREFIX

    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in BUILTIN_MODELS:
        raise ModelError(f"unknown built-in model {name!r}", hint=f"one of: {', '.join(BUILTIN_MODELS)}")
    spec = BUILTIN_MODELS[key]
    return ModelShape(name=name, hidden=spec.hidden_size, layers=spec.num_hidden_layers,
                      heads=spec.num_attention_heads, kv_heads=spec.num_key_value_heads,
                      intermediate=spec.intermediate_size, vocab=spec.vocab_size, tied=spec.tie_word_embeddings,
                      attn_bias=spec.arch == "qwen2", max_positions=spec.max_position_embeddings)


def resolve_shape(spec: str) -> ModelShape:
    """A catalog name, builtin:NAME, a local folder or config.json, or a hub id (needs the network)."""
    if spec.startswith("builtin:"):
        return _builtin(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: no config.json in this folder", hint="point at a transformers model folder")
        return _from_config_file(path / "config.json", path.name)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"{path}: no such file", hint="check the path")
        return _from_config_file(path, path.stem)
    shape = find_model(spec)
    if shape is not None:
        return shape
    return _from_hub(spec)


def _from_hub(repo_id: str) -> ModelShape:
    close = close_models(repo_id)
    hint = (f"did you mean {', '.join(close)}? " if close else "") + \
        "Or pass a local model folder or its config.json (lorakit vram-estimate ./model)"
    if "/" not in repo_id or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        raise ModelError(f"{repo_id!r} is not in the catalog and the hub is offline", hint=hint)
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, "config.json")
    except Exception as exc:  # network errors, gated repos, missing repos: all end the same way for the user
        raise ModelError(f"{repo_id!r} is not in the catalog and its config.json could not be fetched "
                         f"({type(exc).__name__})", hint=hint) from None
    return _from_config_file(Path(path), repo_id)


_OPTIM = {"auto": None, "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_8bit": "adamw-8bit",
          "paged_adamw_8bit": "paged-adamw-8bit", "paged_adamw_32bit": "paged-adamw", "sgd": "sgd"}
_TARGETS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
            "down_proj": "down"}


def setup_from_recipe(recipe) -> tuple[str, Setup]:
    """The model and the setup a training recipe will run with on a CUDA GPU."""
    import importlib.util

    train = recipe.train
    targets = recipe.lora.target_modules
    if isinstance(targets, str):
        lora_targets = targets
    else:
        lora_targets = ",".join(_TARGETS[t] for t in targets if t in _TARGETS) or "all-linear"
    attn = recipe.model.attn_implementation
    if attn in (None, "auto"):
        attn = "flash" if importlib.util.find_spec("flash_attn") else "sdpa"
    attn = {"flash_attention_2": "flash", "flash_attention_3": "flash"}.get(attn, attn)
    stage = "sft"
    if recipe.stage == "dpo":
        stage = "dpo-precomputed" if recipe.dpo.precompute_ref_log_probs is True else "dpo"
    precision = {"auto": "bf16", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}.get(train.precision, "bf16")
    setup = Setup(
        method=recipe.method, dtype=precision, seq_len=recipe.data.max_length, batch_size=train.micro_batch_size,
        grad_checkpointing=train.gradient_checkpointing, optimizer=_OPTIM.get(train.optim),
        lora_r=recipe.lora.r, lora_targets=lora_targets, lora_dropout=recipe.lora.dropout,
        attn=attn if attn in ("eager", "sdpa", "flash") else "sdpa",
        loss="plain" if train.loss == "plain" else "fused", stage=stage,
        double_quant=recipe.qlora.double_quant, grad_accumulation=train.gradient_accumulation_steps,
    )
    return recipe.model.name_or_path, setup
