"""Write the finished parts of an adapter run: PEFT adapter, tokenizer with its chat template, card, manifest."""

from __future__ import annotations

from typing import Any

from lorakit.model_card import write_model_card
from lorakit.runs import RunFolder


def write_adapter_run(run: RunFolder, model, tokenizer, recipe, manifest: dict[str, Any]) -> None:
    # Only the adapter: PEFT writes adapter_config.json + adapter_model.safetensors, loadable with
    # PeftModel.from_pretrained(base, run_folder).
    # DPO adds a frozen "ref" adapter beside the policy; only the policy ("default") belongs in the run.
    model.save_pretrained(str(run.staging), safe_serialization=True, selected_adapters=["default"])
    tokenizer.save_pretrained(str(run.staging))
    write_model_card(run.staging / "README.md", manifest["base_model"]["name"],
                     ["lorakit", manifest["stage"], recipe.method, "lora"], card_text(recipe, manifest),
                     library_name="peft")
    run.write_manifest(manifest)


def card_text(recipe, manifest: dict[str, Any]) -> str:
    summary = manifest.get("summary", {})
    base = manifest["base_model"]["name"]
    lora = recipe.lora
    lines = [
        f"# {manifest['stage'].upper()} adapter for {base}",
        "",
        f"Trained with lorakit {manifest['versions']['lorakit']} ({recipe.method}, {manifest['precision']} on "
        f"{manifest['device']}).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {base} |",
        f"| method | {recipe.method} (LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, "
        f"targets={lora.target_modules}{', rsLoRA' if lora.use_rslora else ''}{', DoRA' if lora.use_dora else ''}) |",
        f"| data | {manifest['dataset']['source']} ({manifest['dataset'].get('format')}, "
        f"{manifest['dataset'].get('rows')} rows, {manifest['dataset']['fingerprint']}) |",
    ]
    gguf = manifest["base_model"].get("gguf")
    if gguf:
        lines.append(f"| base weights | {gguf['note']} (SHA-256 {gguf['sha256'][:12]}) |")
    if manifest.get("parent"):
        lines.append(f"| parent run | {manifest['parent']['path']} |")
    for key in ("steps", "first_loss", "final_loss", "final_eval_loss", "train_seconds"):
        if key in summary:
            lines.append(f"| {key.replace('_', ' ')} | {summary[key]} |")
    lines += [
        "",
        "## Use",
        "",
        "```",
        "lorakit generate THIS_FOLDER --prompt \"...\"",
        "lorakit merge THIS_FOLDER      # a standalone model",
        "```",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"base = AutoModelForCausalLM.from_pretrained({manifest['base_model']['location']!r})",
        "model = PeftModel.from_pretrained(base, 'THIS_FOLDER')",
        "tokenizer = AutoTokenizer.from_pretrained('THIS_FOLDER')",
        "```",
        "",
    ]
    return "\n".join(lines)
