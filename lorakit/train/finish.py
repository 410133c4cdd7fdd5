"""Write the finished parts of an adapter run: PEFT adapter, tokenizer with its chat template, generation config,
card (with the commands that serve it), manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.chat_template import Stops
from lorakit.export.generation_config import write_generation_config
from lorakit.export.model_card import write_model_card
from lorakit.export.serve_info import Adapter, adapter_artifact, markdown, serve_commands
from lorakit.io import write_json_atomic
from lorakit.outputs import RunFolder, TrainingRunManifest
from lorakit.outputs.layout import README_FILE


def write_adapter_run(run: RunFolder, model, tokenizer, recipe, manifest: TrainingRunManifest,
                      state_dict: dict[str, Any] | None = None, stops: Stops | None = None) -> None:
    """`stops`: the run's (lorakit.train.lifecycle computed them once); by default the tokenizer's on the model's
    generation config."""
    # Only the adapter: PEFT writes adapter_config.json + adapter_model.safetensors, loadable with
    # PeftModel.from_pretrained(base, run_folder).
    # DPO adds a frozen "ref" adapter beside the policy; only the policy ("default") belongs in the run.
    # `state_dict`: the gathered weights when FSDP / ZeRO-3 sharded them (PEFT picks the adapter's out of it).
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(str(run.staging), safe_serialization=True, selected_adapters=["default"], **extra)
    base = manifest.base_model
    assert base is not None and base.location
    name_base(run.staging, base.location)
    tokenizer.save_pretrained(str(run.staging))
    # A server stops on generation_config.json's eos list: the base's lists only EOS, not the end-of-turn token.
    eos = write_generation_config(model, tokenizer, run.staging, stops)
    write_model_card(run.staging / README_FILE, base.name, ["lorakit", manifest.stage, recipe.method, "lora"],
                     card_text(recipe, manifest, run.path, eos), library_name="peft")
    run.write_manifest(manifest)


def name_base(folder: Path, location: str) -> None:
    """adapter_config.json names the base a server loads: the hub id as given, or the folder it was loaded from
    (for builtin:… bases, lorakit's build of it; `lorakit export-base` copies it elsewhere)."""
    file = folder / "adapter_config.json"
    config = json.loads(file.read_text())
    if config.get("base_model_name_or_path") != location:
        config["base_model_name_or_path"] = location
        write_json_atomic(file, config)


def card_text(recipe, manifest: TrainingRunManifest, path: Path, eos: list[int]) -> str:
    summary = manifest.summary or {}
    record = manifest.base_model
    assert record is not None and manifest.dataset is not None
    base = record.name
    dataset = manifest.dataset
    lora = recipe.lora
    lines = [
        f"# {manifest.stage.upper()} adapter for {base}",
        "",
        f"Trained with lorakit {manifest.versions['lorakit']} ({recipe.method}, {manifest.precision} on "
        f"{manifest.device}).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {base} |",
        f"| method | {recipe.method} (LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, "
        f"targets={lora.target_modules}{', rsLoRA' if lora.use_rslora else ''}{', DoRA' if lora.use_dora else ''}) |",
        f"| data | {dataset.source} ({dataset.format}, {dataset.rows} rows, {dataset.fingerprint}) |",
    ]
    gguf = record.gguf
    if gguf:
        lines.append(f"| base weights | {gguf.note} (SHA-256 {str(gguf.sha256)[:12]}) |")
    if manifest.parent is not None:
        lines.append(f"| parent run | {manifest.parent.path} |")
    for key in ("steps", "first_loss", "final_loss", "final_eval_loss", "train_seconds"):
        if key in summary:
            lines.append(f"| {key.replace('_', ' ')} | {summary[key]} |")
    for warning in manifest.warnings:
        lines += ["", f"**Warning:** {warning}"]
    lines += [
        "",
        "## Use",
        "",
        "```",
        f"lorakit generate {path} --prompt \"...\"",
        f"lorakit merge {path}      # a standalone model",
        "```",
        "",
    ]
    adapter = Adapter(path.name, Path(path).resolve(), lora.r, lora)
    info = serve_commands(adapter_artifact([adapter], record, recipe.method, eos))
    return "\n".join(lines) + markdown(info)
