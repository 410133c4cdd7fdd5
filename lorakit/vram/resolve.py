"""Where a model's shape comes from (catalog, local folder or config.json, the local HF cache, the hub) and a recipe's
setup."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from lorakit.errors import ConfigError, ModelError
from lorakit.tiny import BUILTIN_MODELS, BUILTIN_PREFIX
from lorakit.vram.catalog import MODELS, close_models, match_model, same_shape
from lorakit.vram.estimate import Setup
from lorakit.vram.shapes import ModelShape, ShapeError, shape_from_config

MAX_CONFIG_BYTES = 8 * 1024**2  # real config.json files are a few KB; anything larger is not one


@dataclass(frozen=True)
class Resolved:
    shape: ModelShape
    source: str  # how the shape was found, for the report


def _parse_config(text: bytes, where: str, name: str) -> ModelShape:
    hint = "point at a transformers config.json of a decoder model, or use a catalog name"
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: {len(text) / 1024**2:.0f} MB is too large for a config.json", hint=hint)
    try:
        config = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start})", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                          hint=hint) from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply", hint=hint) from None
    except ValueError:  # int("9" * 5000): "Exceeds the limit (4300 digits) for integer string conversion"
        raise ConfigError(f"{where}: an integer too long to read (more than 4300 digits)", hint=hint) from None
    try:
        return shape_from_config(config, name)
    except ShapeError as exc:
        if exc.problem.startswith("missing field"):
            raise ConfigError(f"{where}: missing field {exc.field!r} needed to size the model", hint=hint) from None
        raise ConfigError(f"{where}: field {exc.field!r} {exc.problem}", hint=hint) from None


def _from_config_file(path: Path, name: str) -> ModelShape:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})", hint="check the path") from None
    return _parse_config(text, str(path), name)


def _builtin(name: str) -> ModelShape:
    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in BUILTIN_MODELS:
        raise ModelError(f"unknown built-in model {name!r}", hint=f"one of: {', '.join(BUILTIN_MODELS)}")
    spec = BUILTIN_MODELS[key]
    return ModelShape(name=name, hidden=spec.hidden_size, layers=spec.num_hidden_layers,
                      heads=spec.num_attention_heads, kv_heads=spec.num_key_value_heads,
                      intermediate=spec.intermediate_size, vocab=spec.vocab_size, tied=spec.tie_word_embeddings,
                      attn_bias=spec.arch == "qwen2", max_positions=spec.max_position_embeddings)


def _config_source(shape: ModelShape, where: str) -> str:
    twin = same_shape(shape)
    return f"{where} (same shape as {twin})" if twin else where


def resolve_model(spec: str) -> Resolved:
    """A catalog name, builtin:NAME, a local folder or config.json, `-` (a config.json on stdin), a repo id whose
    config.json is in the local Hugging Face cache, a mirror or checkpoint of a catalog model, or a hub id (online)."""
    if spec == "-":
        shape = _parse_config(sys.stdin.buffer.read(), "config.json on stdin", "stdin")
        return Resolved(shape, _config_source(shape, "config.json from stdin"))
    if spec.startswith("builtin:"):
        return Resolved(_builtin(spec), "built-in tiny model")
    if not spec.strip():
        raise ConfigError("the model is empty", hint="give a catalog name, a model folder or a config.json")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: no config.json in this folder", hint="point at a transformers model folder")
        shape = _from_config_file(path / "config.json", path.name)
        return Resolved(shape, _config_source(shape, f"{path / 'config.json'}"))
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"{path}: no such file", hint="check the path")
        shape = _from_config_file(path, path.stem)
        return Resolved(shape, _config_source(shape, str(path)))
    if spec in MODELS:
        return Resolved(MODELS[spec], "catalog")
    cached = _from_hf_cache(spec)
    if cached is not None:
        return cached
    found = match_model(spec)
    if found is not None:
        if "/" not in spec and found.split("/", 1)[-1].lower() == spec.lower():
            return Resolved(MODELS[found], "catalog")  # a bare catalog name
        return Resolved(replace(MODELS[found], name=spec),
                        f"catalog: same shape as {found} (a release, mirror or checkpoint of it)")
    shape = _from_hub(spec)
    return Resolved(shape, _config_source(shape, "hub config.json"))


def resolve_shape(spec: str) -> ModelShape:
    return resolve_model(spec).shape


def _from_hf_cache(repo_id: str) -> Resolved | None:
    """A config.json already downloaded for this repo (works offline; nothing is fetched)."""
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub would reject (odd characters): not in the cache either
        return None
    if not isinstance(found, str):
        return None
    shape = _from_config_file(Path(found), repo_id)
    return Resolved(shape, _config_source(shape, f"local Hugging Face cache ({found})"))


def _from_hub(repo_id: str) -> ModelShape:
    close = close_models(repo_id)
    hint = (f"did you mean {', '.join(close)}? " if close else "") + \
        "Or estimate from its config.json: lorakit vram-estimate ./config.json (or pipe it in: ... | lorakit " \
        "vram-estimate -)"
    if "/" not in repo_id or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        raise ModelError(f"{repo_id!r} is not in the catalog and the hub is offline", hint=hint)
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, "config.json")
    except Exception as exc:  # network errors, gated repos, missing repos: all end the same way for the user
        raise ModelError(f"{repo_id!r} is not in the catalog and its config.json could not be fetched "
                         f"({type(exc).__name__})", hint=hint) from None
    return _from_config_file(Path(path), repo_id)


# train.optim -> the estimator's optimizer names (None: lorakit's choice, paged 8-bit AdamW for QLoRA)
OPTIM_NAMES = {"auto": None, "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_8bit": "adamw-8bit",
          "paged_adamw_8bit": "paged-adamw-8bit", "paged_adamw_32bit": "paged-adamw", "sgd": "sgd"}
# lora.target_modules -> the estimator's linear names
TARGET_NAMES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
            "down_proj": "down"}


def setup_from_recipe(recipe) -> tuple[str, Setup]:
    """The model and the setup a training recipe will run with on a CUDA GPU."""
    import importlib.util

    train = recipe.train
    targets = recipe.lora.target_modules
    if isinstance(targets, str):
        lora_targets = targets
    else:
        lora_targets = ",".join(TARGET_NAMES[t] for t in targets if t in TARGET_NAMES) or "all-linear"
    attn = recipe.model.attn_implementation
    if attn in (None, "auto"):
        attn = "flash" if importlib.util.find_spec("flash_attn") else "sdpa"
    attn = {"flash_attention_2": "flash", "flash_attention_3": "flash"}.get(attn, attn)
    stage = "sft"
    if recipe.stage == "dpo":
        stage = "dpo-precomputed" if recipe.dpo.precompute_ref_log_probs is True else "dpo"
    precision = {"auto": "bf16", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}.get(train.precision, "bf16")
    distributed = getattr(recipe, "distributed", None)  # the multi-GPU section, where the recipe schema has one
    setup = Setup(
        method=recipe.method, dtype=precision, seq_len=recipe.data.max_length, batch_size=train.micro_batch_size,
        grad_checkpointing=train.gradient_checkpointing, optimizer=OPTIM_NAMES.get(train.optim),
        lora_r=recipe.lora.r, lora_targets=lora_targets, lora_dropout=recipe.lora.dropout,
        attn=attn if attn in ("eager", "sdpa", "flash") else "sdpa",
        loss="plain" if train.loss == "plain" else "fused", stage=stage,
        double_quant=recipe.qlora.double_quant, grad_accumulation=train.gradient_accumulation_steps,
        activation_offloading=train.activation_offloading,
        num_gpus=int(getattr(distributed, "num_processes", None) or 1),
        strategy=str(getattr(distributed, "strategy", None) or "ddp"),
    )
    return recipe.model.name_or_path, setup
