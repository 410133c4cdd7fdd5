"""Is a folder lorakit reads whole? Run folders, adapters, checkpoints and model folders, checked before use.

A file damaged on disk (cut short by a full disk or a killed copy, overwritten with other bytes, edited by hand)
otherwise surfaces deep inside safetensors, PEFT or the Trainer as `SafetensorError`, `RuntimeError: Error(s) in
loading state_dict`, `NoMatchingPeftModuleError` or `PytorchStreamReader failed`. Checked here first, it is one line:
"run X is damaged: <file>: <what>", with what to do. The checks read headers and JSON, not weights (except
`finite=True`, which reads an adapter's tensors: adapters are small).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError, ModelError, RunError
from lorakit.io import decode, file_kind, parse_json, read_bytes
from lorakit.outputs.layout import COMPLETE_MARK

# JSON files a model, adapter or run folder may hold, all of which transformers or PEFT parse on load.
JSON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json", "adapter_config.json", "model.safetensors.index.json")
TEXT_FILES = ("chat_template.jinja",)
CHECKPOINT_STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
# lora_A / lora_B (linear layers) and lora_embedding_A / _B: A is (r, in), B is (out, r) in both
LORA_KEY = re.compile(r"\.lora_(?:embedding_)?([AB])(?:\.|$)")


class Damaged(RunError):
    """A file lorakit wrote (or a model folder it reads) is unreadable or inconsistent."""

    def __init__(self, owner: str, file: str, what: str, hint: str | None = None):
        super().__init__(f"{owner} is damaged: {file}: {what}", hint=hint or "re-create it (re-run the command that "
                         "wrote it, with --force), or restore the file from a copy")
        self.owner, self.file, self.what = owner, file, what


def _relative(folder: Path, file: Path) -> str:
    try:
        return str(file.relative_to(folder))
    except ValueError:
        return str(file)


def check_files(folder: Path, owner: str, names: tuple[str, ...] = JSON_FILES + TEXT_FILES,
                hint: str | None = None) -> None:
    """Every one of `names` that exists in `folder` is a regular file of UTF-8 text (and JSON objects parse)."""
    for name in names:
        file = folder / name
        if not (file.exists() or file.is_symlink()):
            continue
        check_file(folder, file, owner, hint)


def check_file(folder: Path, file: Path, owner: str, hint: str | None = None) -> Any:
    rel = _relative(folder, file)
    try:
        raw = read_bytes(file, LorakitError)
        text = decode(raw, rel, LorakitError)
        if file.suffix == ".json":
            return parse_json(text, rel, LorakitError, expect=dict)
        return text
    except LorakitError as exc:
        raise Damaged(owner, rel, getattr(exc, "what", exc.message), hint) from None


def tensor_shapes(file: Path, owner: str, folder: Path, hint: str | None = None) -> dict[str, list[int]]:
    """Names and shapes of a safetensors file, from its header; a cut-short or foreign file is `Damaged`."""
    from safetensors import SafetensorError, safe_open

    rel = _relative(folder, file)
    kind = file_kind(file)
    if kind is not None:
        raise Damaged(owner, rel, kind if kind.startswith(("not ", "a broken")) else f"is {kind}", hint)
    if file.stat().st_size == 0:
        raise Damaged(owner, rel, "is empty", hint)
    try:
        # numpy: the header is read the same, without importing torch (serve-info stays light); bf16 shapes read too
        with safe_open(str(file), framework="np") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.removeprefix("Error while deserializing header: ")
        raise Damaged(owner, rel, f"not a readable safetensors file ({reason}; cut short or overwritten?)",
                      hint) from None


def check_adapter(folder: str | Path, owner: str, finite: bool = False, hint: str | None = None) -> dict[str, Any]:
    """A PEFT LoRA adapter that PEFT can load: its config parses, its tensors are readable, hold LoRA pairs whose
    ranks agree with each other and with the config, and (with `finite`) hold no NaN or inf. Returns the config."""
    folder = Path(folder)
    config = check_file(folder, folder / "adapter_config.json", owner, hint)
    shapes = tensor_shapes(folder / "adapter_model.safetensors", owner, folder, hint)
    lora = {key: shape for key, shape in shapes.items() if LORA_KEY.search(key)}
    if not lora:
        what = "holds no tensors" if not shapes else "holds no LoRA tensors (lora_A/lora_B)"
        raise Damaged(owner, "adapter_model.safetensors", f"{what}: merging or continuing it would change nothing",
                      hint)
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise Damaged(owner, "adapter_config.json", "no peft_type: not a PEFT adapter config", hint)
    if peft_type.upper() != "LORA":
        raise ModelError(f"{owner} is a {peft_type} adapter; lorakit trains and merges LoRA adapters",
                         hint="merge it with PEFT itself")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise Damaged(owner, "adapter_config.json", f"'r' is {rank!r}, not a positive integer", hint)
    patterned = bool(config.get("rank_pattern"))
    wrapped = parameter_modules(config)
    ranks: dict[str, dict[str, int]] = {}
    for key, shape in lora.items():
        if len(shape) != 2:
            if len(shape) < 2:
                raise Damaged(owner, "adapter_model.safetensors", f"{key} has shape {shape}, not a matrix", hint)
            continue  # convolution LoRA: PEFT checks these itself
        match = LORA_KEY.search(key)
        module, side = key[:match.start()], match.group(1)
        ranks.setdefault(module, {})[side] = shape[0] if side == "A" else shape[1]
    for module, sides in sorted(ranks.items()):
        if len(set(sides.values())) > 1:
            raise Damaged(owner, "adapter_model.safetensors",
                          f"{module}: lora_A has rank {sides['A']} but lora_B has rank {sides['B']}", hint)
        got = next(iter(sides.values()))
        if is_parameter_module(module, wrapped):
            # PEFT's target_parameters LoRA on a (experts, out, in) weight: one rank-r pair per expert, stacked
            if got % rank:
                raise Damaged(owner, "adapter_model.safetensors",
                              f"{module} has rank {got}, not a multiple of r={rank} (one rank-r pair per expert)",
                              hint)
            continue
        if not patterned and got != rank:
            raise Damaged(owner, "adapter_model.safetensors",
                          f"{module} has rank {got}, but adapter_config.json says r={rank}", hint)
    if finite:
        check_finite(folder / "adapter_model.safetensors", owner, folder, hint)
    return config


def parameter_modules(config: dict[str, Any]) -> list[str]:
    """Module paths (suffixes) that hold the parameters an adapter's `target_parameters` names: mlp.experts for
    mlp.experts.gate_up_proj."""
    entries = config.get("target_parameters") or []
    return sorted({entry.rpartition(".")[0] for entry in entries if isinstance(entry, str) and "." in entry})


def is_parameter_module(module: str, wrapped: list[str]) -> bool:
    """Whether an adapter key's module path is one of PEFT's parameter wrappers (nested as .base_layer, one per
    targeted parameter of the same module)."""
    while module.endswith(".base_layer"):
        module = module[: -len(".base_layer")]
    return any(module == suffix or module.endswith("." + suffix) for suffix in wrapped)


def check_finite(file: Path, owner: str, folder: Path, hint: str | None = None) -> None:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(file))
    bad = sorted(name for name, tensor in tensors.items()
                 if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))
    if bad:
        raise Damaged(owner, _relative(folder, file), f"{len(bad)} of {len(tensors)} tensors hold NaN or inf "
                      f"(e.g. {bad[0]})",
                      hint="the run diverged or the file was overwritten: re-train it (a lower learning rate, "
                           "train.max_grad_norm) or restore the file")


def check_run_files(folder: str | Path, owner: str) -> None:
    """The parts of a finished run that later commands read: text/JSON files, and the adapter when it has one."""
    folder = Path(folder)
    check_files(folder, owner)
    present = [(folder / name).exists() or (folder / name).is_symlink()
               for name in ("adapter_config.json", "adapter_model.safetensors")]
    if all(present):  # one missing: the command that needs the adapter says so in its own words
        check_adapter(folder, owner)


def check_checkpoint(checkpoint: Path, owner: str) -> None:
    """A Trainer checkpoint that `--resume` can load: trainer state, adapter, optimizer, scheduler and RNG state."""
    folder = checkpoint.parent.parent.parent  # files are named from beside the staging folder: .RUN.partial/...
    hint = (f"delete {_relative(folder, checkpoint)} to resume from the checkpoint before it, or pass --force to "
            "start over")
    state = check_file(folder, checkpoint / "trainer_state.json", owner, hint) \
        if (checkpoint / "trainer_state.json").exists() else None
    if state is None:
        raise Damaged(owner, _relative(folder, checkpoint / "trainer_state.json"), "missing", hint)
    step = state.get("global_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise Damaged(owner, _relative(folder, checkpoint / "trainer_state.json"),
                      f"global_step is {step!r}, not a step number", hint)
    try:
        check_files(checkpoint, owner, hint=hint)
        if (checkpoint / "adapter_model.safetensors").exists() or (checkpoint / "adapter_config.json").exists():
            check_adapter(checkpoint, owner, hint=hint)
    except Damaged as exc:  # name the file inside the checkpoint
        raise Damaged(owner, _relative(folder, checkpoint / exc.file), exc.what, hint) from None
    for name in CHECKPOINT_STATE:
        file = checkpoint / name
        rel = _relative(folder, file)
        if not file.exists():
            if name == "rng_state.pth":
                continue  # optional for the Trainer
            raise Damaged(owner, rel, "missing", hint)
        kind = file_kind(file)
        if kind is not None:
            raise Damaged(owner, rel, kind, hint)
        # torch.save writes a zip archive: a cut-short or overwritten one fails its directory or a CRC here, instead
        # of "PytorchStreamReader failed reading zip archive" inside the Trainer.
        try:
            with zipfile.ZipFile(file) as archive:
                broken = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise Damaged(owner, rel, f"not a readable torch checkpoint ({exc}; cut short or overwritten?)",
                          hint) from None
        if broken is not None:
            raise Damaged(owner, rel, f"corrupt entry {broken} (cut short or overwritten?)", hint)


# Tensors whose first dimension is the vocabulary: the token embeddings and the output head, in the families lorakit
# exports (Llama, Qwen, Mistral, Gemma, Phi: model.embed_tokens / lm_head) and GPT-2-style ones (wte).
VOCAB_TENSORS = ("embed_tokens.weight", "lm_head.weight", "wte.weight")


def check_model_files(folder: str | Path, owner: str) -> None:
    """A transformers model folder (a merge, an export source): its JSON files parse, its weights are whole, and
    its config's vocabulary size is the one its weights hold (a config from another model otherwise fails deep in
    from_pretrained, which suggests ignore_mismatched_sizes)."""
    folder = Path(folder)
    check_files(folder, owner)
    shapes = {}
    for file in sorted(folder.glob("*.safetensors")):
        shapes.update({(file.name, key): shape for key, shape in tensor_shapes(file, owner, folder).items()})
    config = check_file(folder, folder / "config.json", owner) if (folder / "config.json").is_file() else {}
    vocab = config.get("vocab_size")  # multimodal configs keep it in a sub-config: those are not checked here
    if not isinstance(vocab, int) or isinstance(vocab, bool):
        return
    for (file, key), shape in sorted(shapes.items()):
        if key.endswith(VOCAB_TENSORS) and shape and shape[0] != vocab:
            raise Damaged(owner, "config.json", f"vocab_size is {vocab}, but {file} holds {key} for {shape[0]} "
                          "tokens: the config and the weights are of different models",
                          hint="put back the config.json these weights came with, or write the model again "
                               "(lorakit merge --force)")


def check_gguf(folder: Path, name: str, owner: str) -> None:
    """A GGUF file whose header and tensor table read whole (gguf's reader maps the file; it loads no weights)."""
    file = folder / name
    kind = file_kind(file)
    if kind is not None:
        raise Damaged(owner, name, kind if kind.startswith(("not ", "a broken")) else f"is {kind}")
    try:
        import gguf

        gguf.GGUFReader(str(file))
    except Exception:  # the reader fails in numpy's words (ValueError, IndexError...) on a cut or foreign file
        raise Damaged(owner, name, "not a readable GGUF file: its header or tensor table is incomplete (cut short "
                                   "or overwritten?)") from None


def load_adapter(model, folder: str | Path, owner: str, **kwargs):
    """`PeftModel.from_pretrained`, with its failures on a damaged or mismatched adapter mapped by type."""
    from peft import PeftModel
    from peft.utils.error import NoMatchingPeftModuleError
    from safetensors import SafetensorError

    grow_for_adapter(model, Path(folder))
    try:
        return PeftModel.from_pretrained(model, str(folder), **kwargs)
    except NoMatchingPeftModuleError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{owner} does not fit this base model: adapter_config.json's target modules match none "
                         f"of its layers ({first})",
                         hint="use the base model the adapter was trained on (--model), or re-train it") from None
    except SafetensorError as exc:
        raise Damaged(owner, "adapter_model.safetensors", f"not readable ({exc})") from None
    except RuntimeError as exc:
        if "size mismatch" not in str(exc) and "Error(s) in loading state_dict" not in str(exc):
            raise
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "shapes differ")
        raise ModelError(f"{owner} does not fit this base model: {detail[:200]}",
                         hint="use the base model the adapter was trained on (--model), or re-train it") from None


def grow_for_adapter(model, folder: Path) -> None:
    """An adapter trained with tokens its run added to the vocabulary (trainable_token_indices, see
    lorakit.model.grow_vocabulary) needs a base with rows for them: grow it (PEFT then writes the trained rows)."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return  # PeftModel.from_pretrained names what is wrong with it
    indices = config.get("trainable_token_indices") if isinstance(config, dict) else None
    ids = [i for rows in (indices.values() if isinstance(indices, dict) else [indices or []]) for i in rows
           if isinstance(i, int)]
    if ids and max(ids) >= model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(max(ids) + 1, mean_resizing=False)


# The Trainer writes a checkpoint's files one by one, trainer_state.json last, none of them atomically: a process
# killed while saving leaves a folder that looks like a checkpoint. lorakit marks a checkpoint once the Trainer has
# finished saving it (lorakit.train.callbacks.MarkCheckpoints); `--resume` uses only marked ones.


def mark_checkpoint_complete(checkpoint: Path, step: int) -> None:
    (checkpoint / COMPLETE_MARK).write_text(f"{step}\n")


def checkpoint_is_complete(checkpoint: Path) -> bool:
    """Marked complete, or (a checkpoint from before lorakit marked them) whole when read back."""
    if (checkpoint / COMPLETE_MARK).is_file():
        return True
    if not (checkpoint / "trainer_state.json").is_file():
        return False
    try:
        check_checkpoint(checkpoint, "checkpoint")
    except LorakitError:
        return False
    return True
