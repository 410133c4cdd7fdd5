"""Load a run (base + adapter) or a merged model folder for generation, and generate replies with its template."""

from __future__ import annotations

from pathlib import Path

from lorakit.chat_template import Stops
from lorakit.errors import RunError
from lorakit.model import base_source_of, load_base_model, resolve_device, resolve_model_source
from lorakit.outputs import Damaged, open_output, read_run
from lorakit.outputs.integrity import check_model_files, load_adapter
from lorakit.outputs.layout import TOKENIZER_LOAD_FILES, has_tokenizer


def load_for_inference(path: str | Path, base_override: str | None = None, device: str | None = None):
    """(model, tokenizer) for a run folder (adapter over its base, quantized as trained) or a plain model folder."""
    from transformers import AutoTokenizer

    path = Path(path)
    device = device or resolve_device()
    precision = "bf16" if device == "cuda" else "fp32"
    output = open_output(path)  # refuses one another command is still writing
    # a run, whole or damaged (read_run names what is wrong); a merged model has a manifest but no recipe or adapter
    if output.looks_like_run:
        run = read_run(path)
        check_tokenizer(path, f"run {path}")
        source = base_source_of(run, base_override)
        base = load_base_model(source, run.method, run.recipe.qlora, precision, device,
                               trust_remote_code=run.recipe.model.trust_remote_code)
        model = load_adapter(base, path, f"run {path}")
    elif (path / "config.json").exists():
        check_model_files(path, f"model {path}")
        check_tokenizer(path, f"model {path}")
        source = resolve_model_source(str(path))
        model = load_base_model(source, "lora", None, precision, device)
    else:
        raise RunError(f"{path} is neither a lorakit run nor a model folder", hint="pass a run or merged folder")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model.eval()
    return model, tokenizer


def check_tokenizer(folder: Path, owner: str) -> None:
    """A run or model folder carries the tokenizer it was trained with (lorakit writes one into each): without it
    there is nothing to turn a prompt into tokens."""
    if not has_tokenizer(folder):
        raise Damaged(owner, TOKENIZER_LOAD_FILES[0], f"missing (no {' or '.join(TOKENIZER_LOAD_FILES)}: nothing to "
                      "tokenize with)", hint="copy the base model's tokenizer files into it, or re-run the command "
                                             "that wrote it (with --force)")


def generate_reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 128,
                   temperature: float = 0.0, top_p: float = 1.0) -> str:
    import torch

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
    sampling = temperature > 0
    # the model's generation config lists its own stops (a run's base, a merged model's full list)
    stops = Stops.of(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            eos_token_id=stops.ids,
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
