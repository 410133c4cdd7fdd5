"""Load a run (base + adapter) or a merged model folder for generation, and generate replies with its template."""

from __future__ import annotations

from pathlib import Path

from lorakit.errors import ModelError, RunError
from lorakit.model import ModelSource, load_base_model, resolve_device, resolve_model_source
from lorakit.runs import MANIFEST_FILE, Run, read_run
from lorakit.chat_template import stop_token_ids


def base_source_of(run: Run, override: str | None = None) -> ModelSource:
    """The base model a run was trained on; re-resolved if its recorded folder moved (built-ins are rebuilt)."""
    base = run.manifest["base_model"]
    if override:
        return resolve_model_source(override, None, run.recipe.get("model", {}).get("trust_remote_code", False))
    trust = run.recipe.get("model", {}).get("trust_remote_code", False)
    if Path(base["location"]).is_dir():
        from lorakit.model import check_model_folder

        check_model_folder(Path(base["location"]), trust)
        return ModelSource(base["name"], base["location"], True, base.get("revision"))
    name = base["name"]
    if name.startswith("builtin:") or Path(name).exists() or ("/" in name and not name.startswith((".", "/"))):
        return resolve_model_source(name, base.get("revision"), trust)
    raise ModelError(f"the base model of {run.path} ({base['location']}) is gone",
                     hint="pass --model with the base model's folder or hub id")


def load_for_inference(path: str | Path, base_override: str | None = None, device: str | None = None):
    """(model, tokenizer) for a run folder (adapter over its base, quantized as trained) or a plain model folder."""
    from transformers import AutoTokenizer

    path = Path(path)
    device = device or resolve_device()
    precision = "bf16" if device == "cuda" else "fp32"
    if (path / MANIFEST_FILE).exists() and (path / "adapter_config.json").exists():
        from peft import PeftModel

        from lorakit.config import QLoraSection

        run = read_run(path)
        source = base_source_of(run, base_override)
        qlora = QLoraSection(**run.recipe.get("qlora", {}))
        base = load_base_model(source, run.method, qlora, precision, device,
                               trust_remote_code=run.recipe.get("model", {}).get("trust_remote_code", False))
        model = PeftModel.from_pretrained(base, str(path))
    elif (path / "config.json").exists():
        source = resolve_model_source(str(path))
        model = load_base_model(source, "lora", None, precision, device)
    else:
        raise RunError(f"{path} is neither a lorakit run nor a model folder", hint="pass a run or merged folder")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model.eval()
    return model, tokenizer


def generate_reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 128,
                   temperature: float = 0.0, top_p: float = 1.0) -> str:
    import torch

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
    sampling = temperature > 0
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
