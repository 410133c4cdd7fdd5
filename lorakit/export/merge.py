"""`lorakit merge`: fold a run's adapter into its base and write a standalone transformers model.

LoRA runs merge W + scale * BA into the base loaded in the output dtype (PEFT does the math, so rsLoRA, DoRA and
modules_to_save merge as PEFT defines them). QLoRA runs have two modes:

- `dequantized` (default): load the base in 4-bit exactly as training did, dequantize it, then merge. These are the
  weights the adapter was trained against, so the merged model reproduces the trained one (KL ~1e-7 in fp32).
- `original`: merge into the original full-precision weights, which the adapter never saw (KL ~0.3 on a tiny model).

Either way merge measures the gap between the model as trained (adapter over its base, NF4 for QLoRA) and the merged
model on chats from the run's data, and in the exact modes refuses to write a model whose gap exceeds the tolerance.
Memory: the base is held once, in the output dtype (plus the 4-bit copy while it is dequantized), and shards are
written one at a time.
"""

from __future__ import annotations

import gc
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import Progress

from lorakit.config import merge_dtype, shard_size_bytes
from lorakit.console import err, info
from lorakit.errors import ConfigError, ModelError, RunError
from lorakit.export.generation_config import write_generation_config
from lorakit.export.logit_gap import compare_logits, logits_for, sample_token_ids
from lorakit.export.model_card import write_model_card
from lorakit.export.serve_info import Artifact, markdown, serve_commands
from lorakit.io import atomic_dir, check_can_write, check_output_path, read_json, write_json_atomic
from lorakit.model import (
    ModelSource,
    base_source_of,
    hub_error,
    load_base_model,
    load_tokenizer,
    resolve_model_source,
    torch_dtype,
)
from lorakit.outputs import (
    LineageEntry,
    MergeManifest,
    Run,
    hold_output,
    now,
    open_output,
    package_versions,
    read_run,
    write_manifest,
)
from lorakit.outputs.integrity import (
    check_adapter,
    check_files,
    is_parameter_module,
    load_adapter,
    parameter_modules,
)
from lorakit.outputs.layout import (
    ADAPTER_FILES,
    README_FILE,
    TOKENIZER_FILES,
    WEIGHTS_INDEX,
    merged_folder,
    staging_path,
)

DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# mean KL(trained || merged) per token above which an exact merge is refused. fp32 merges reproduce the trained
# model to ~1e-8; a 16-bit output adds one rounding of every weight (measured ~3e-4 on the tiny model).
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-3, "float16": 2e-3}


@dataclass
class MergeSource:
    """What is being merged: a lorakit run folder, or a bare PEFT adapter folder with --model."""

    adapter_dir: Path
    base: ModelSource
    method: str  # lora | qlora
    qlora: Any
    trained_precision: str
    run: Run | None = None
    lineage: list[LineageEntry] = field(default_factory=list)


@dataclass
class MergeResult:
    path: Path
    mode: str
    dtype: str
    gap: dict[str, Any] | None
    manifest: MergeManifest


def open_source(source: str | Path, model: str | None) -> MergeSource:
    folder = Path(source)
    output = open_output(folder)  # refuses a run another command is still writing
    if not folder.is_dir() and staging_path(folder).is_dir():
        raise RunError(f"run {folder} did not finish (an interrupted run is in {staging_path(folder).name})",
                       hint="finish it with the same training command plus --resume")
    if not folder.is_dir():
        raise RunError(f"{folder} not found", hint="pass a run folder written by lorakit sft or lorakit dpo")
    missing = [name for name in ADAPTER_FILES if not (folder / name).exists()]
    if output.marked or output.has_recipe:
        run = read_run(folder)  # a run, whole or damaged (read_run names what is wrong)
        if missing:
            raise RunError(f"{folder} is missing adapter file(s): {', '.join(missing)}", hint="re-run that stage")
        check_adapter(folder, f"run {folder}", finite=True)  # NaN weights would merge into a NaN model
        return MergeSource(folder, base_source_of(run, model), run.method, run.recipe.qlora, run.precision, run,
                           open_output(folder).lineage().training_record())
    if missing:
        raise RunError(f"{folder} is not a lorakit run or a PEFT adapter folder (missing {', '.join(missing)})",
                       hint="pass a run folder, or an adapter folder with adapter_config.json and "
                            "adapter_model.safetensors plus --model")
    check_files(folder, f"adapter {folder}")
    config = check_adapter(folder, f"adapter {folder}", finite=True)
    base = model or config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise RunError(f"adapter {folder} is damaged: adapter_config.json: base_model_name_or_path is not a name",
                       hint="pass --model with the base model")
    if not base:
        raise ModelError(f"{folder} does not name its base model", hint="pass --model with the base model")
    return MergeSource(folder, resolve_model_source(base), "lora", None, "fp32", None,
                       [LineageEntry(stage="adapter", path=str(folder.resolve()))])


def check_adapter_shapes(adapter_dir: Path, base: ModelSource, trust_remote_code: bool = False) -> None:
    """Compare every LoRA matrix with the base layer it targets, before any weights load."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    base_location = base.location
    try:
        config = AutoConfig.from_pretrained(base_location, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise hub_error(base, exc) from None
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    modules = dict(skeleton.named_modules())
    adapter_config = read_json(adapter_dir / "adapter_config.json", ModelError)
    wrapped = parameter_modules(adapter_config)
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        for key in sorted(handle.keys()):
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
            if is_parameter_module(module_name, wrapped):
                check_parameter_target(adapter_dir, module_name, modules, adapter_config, base_location)
                continue
            module = modules.get(module_name)
            shape = handle.get_slice(key).get_shape()
            if module is None or not hasattr(module, "in_features"):
                raise ModelError(f"{adapter_dir} does not fit the base: the adapter targets {module_name}, which the "
                                 f"base model {base_location} lacks",
                                 hint="merge the adapter into the base it was trained on (--model)")
            expected = module.in_features if ".lora_A." in key else module.out_features
            got = shape[1] if ".lora_A." in key else shape[0]
            if got != expected:
                raise ModelError(
                    f"{adapter_dir}: adapter module {module_name} does not fit the base: its "
                    f"{'input' if '.lora_A.' in key else 'output'}"
                    f" size is {got}, the base layer's is {expected}",
                    hint="merge the adapter into the base it was trained on (--model)")


def check_parameter_target(adapter_dir: Path, module_name: str, modules: dict[str, Any], adapter_config: dict,
                           base_location: str) -> None:
    """A target_parameters LoRA (PEFT's ParamWrapper, nested as .base_layer per parameter): the module exists in the
    base and holds a parameter the adapter names. Exact sizes are PEFT's to check when it loads the adapter (a
    mismatch is then one line through integrity.load_adapter)."""
    owner_name = module_name
    while owner_name.endswith(".base_layer"):
        owner_name = owner_name[: -len(".base_layer")]
    module = modules.get(owner_name)
    names = [entry.rpartition(".")[2] for entry in adapter_config.get("target_parameters") or []]
    if module is None or not any(isinstance(getattr(module, name, None), torch_parameter()) for name in names):
        raise ModelError(f"{adapter_dir} does not fit the base: the adapter targets parameters "
                         f"{', '.join(names)} of {owner_name}, which the base model {base_location} lacks",
                         hint="merge the adapter into the base it was trained on (--model)")


def torch_parameter():
    import torch

    return torch.nn.Parameter


def _owner(src: MergeSource) -> str:
    return f"{'run' if src.run is not None else 'adapter'} {src.adapter_dir}"


def trained_model(src: MergeSource, dtype: str):
    """The model exactly as trained: base (4-bit for QLoRA) + adapter, in the training precision, on the CPU; a LoRA
    run trained in 16 bits merged into float32 is scored in float32 (the same weights, computed without 16-bit
    rounding of every activation, which is what a float32 merge of them computes)."""
    base = load_base_model(src.base, src.method, src.qlora, src.trained_precision, "cpu")
    model = load_adapter(base, src.adapter_dir, _owner(src)).eval()
    if src.method != "qlora" and upcast_base(src, dtype):
        model = model.float()
    return model


def upcast_base(src: MergeSource, dtype: str) -> bool:
    """A float32 merge of a run whose base trained in 16 bits: the base is loaded as training rounded it, then
    widened (its adapter learned those rounded weights, not the file's fp32 ones: a GGUF base unpacks to fp32)."""
    return dtype == "float32" and merge_dtype(src.trained_precision or "fp32") != "float32"


def merged_model(src: MergeSource, dtype: str, mode: str):
    """Base + adapter folded into plain weights, in `dtype`."""
    import torch

    if src.method == "qlora" and mode == "dequantized":
        # The 4-bit weights exactly as training saw them (same dtype, same quantization settings), then plain.
        base = load_base_model(src.base, "qlora", src.qlora, src.trained_precision, "cpu").dequantize()
    elif upcast_base(src, dtype):
        base = load_base_model(src.base, "lora", None, src.trained_precision, "cpu").float()
    else:
        base = load_base_model(src.base, "lora", None, DTYPES[dtype], "cpu")
    model = load_adapter(base, src.adapter_dir, _owner(src))
    merged = model.merge_and_unload(safe_merge=True)
    merged.config.dtype = torch_dtype(dtype)
    if getattr(merged.config, "quantization_config", None) is not None:
        del merged.config.quantization_config
    with torch.no_grad():
        merged.to(torch_dtype(dtype))
    return merged.eval()


def write_shards(model, folder: Path, max_shard_size: str) -> int:
    """Write the state dict as safetensors shards, one at a time, with a progress bar."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    state = model.state_dict()
    seen: dict[int, str] = {}
    for name in list(state):
        pointer = state[name].data_ptr()
        if pointer in seen:
            del state[name]  # a tied weight (lm_head = embeddings): stored once, as transformers does
        else:
            seen[pointer] = name
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("Writing shards", total=len(split.filename_to_tensors))
        for filename, names in split.filename_to_tensors.items():
            save_file({n: state[n].contiguous() for n in names}, str(folder / filename), metadata={"format": "pt"})
            progress.advance(task)
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        write_json_atomic(folder / WEIGHTS_INDEX, index)
    return len(split.filename_to_tensors)


def copy_tokenizer(src: MergeSource, folder: Path) -> None:
    """The base's tokenizer files verbatim (transformers v5 does not re-write tokenizer.model), then the run's own
    (its chat template and pad token) on top."""
    base_dir = Path(src.base.location)
    if src.base.is_local and base_dir.is_dir():
        for name in TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copy2(base_dir / name, folder / name)
    if (src.adapter_dir / "tokenizer_config.json").is_file():
        for name in TOKENIZER_FILES:
            if (src.adapter_dir / name).is_file():
                shutil.copy2(src.adapter_dir / name, folder / name)
    else:
        # A bare adapter has no tokenizer of its own: the base's, with the template lorakit would have trained with.
        load_tokenizer(src.base).save_pretrained(str(folder))


def card_text(manifest: MergeManifest, path: Path | None = None, eos: list[int] | None = None) -> str:
    gap = manifest.gap or {}
    base = manifest.base_model.name if manifest.base_model is not None else "?"
    runs = " -> ".join(f"{r.stage} ({r.path})" for r in reversed(manifest.lineage))
    lines = [
        f"# Merged model: {base} + adapters", "",
        "| | |", "|---|---|",
        f"| base | {base} |",
        f"| adapter runs | {runs} |",
        f"| method | {manifest.method} |",
        f"| merge mode | {manifest.mode} |",
        f"| dtype | {manifest.dtype} |",
    ]
    if gap:
        lines.append(f"| gap vs trained model | mean KL {gap['mean_kl']:.2e}, max abs logit diff "
                     f"{gap['max_abs_logit_diff']:.2e}, top-1 agreement {gap['top1_agreement']:.4f} |")
    lines += ["", "Loads with plain transformers: `AutoModelForCausalLM.from_pretrained(this_folder)` (no peft).", ""]
    if path is not None:
        path = Path(path).resolve()
        lines.append(markdown(serve_commands(Artifact("merged", path, path.name, eos=list(eos or [])))))
    return "\n".join(lines)


def merge_run(source: str | Path, output_dir: str | Path | None = None, dtype: str | None = None,
              base_mode: str = "dequantized", max_shard_size: str = "2GB", force: bool = False,
              model: str | None = None, verify: bool = True) -> MergeResult:
    """Merge a run (or bare adapter) into a standalone model at `output_dir` (default `<source>-merged`).

    The output folder must not exist unless `force`; it appears only once complete and verified. `dtype` None: bfloat16,
    or float32 when the base was unpacked from a GGUF file (its weights are dequantized fp32, and a real model's bf16
    rounding exceeds the bf16 merge tolerance: SmolLM2-135M from its Q4_1 GGUF measured mean KL 7.5e-3).
    """
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}", hint="bfloat16 is the default")
    if base_mode not in ("dequantized", "original"):
        raise ConfigError(f"--base {base_mode} is not dequantized or original", hint="dequantized is the default")
    if model is not None and not model.strip():
        raise ModelError("--model is empty", hint="give the base model's hub id or folder, or leave --model out")
    if shard_size_bytes(max_shard_size) is None:
        raise ConfigError(f"--max-shard-size {max_shard_size!r} is not a positive size", hint="e.g. 2GB or 500MB")
    source = Path(source)
    target = Path(output_dir) if output_dir is not None else merged_folder(source)
    check_output_path(target)
    with hold_output(target, "lorakit merge"):
        return _merge(source, target, dtype, base_mode, max_shard_size, force, model, verify)


def _merge(source: Path, target: Path, dtype: str | None, base_mode: str, max_shard_size: str, force: bool,
           model: str | None, verify: bool) -> MergeResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = open_source(source, model)
    if dtype is None:
        dtype = "float32" if src.base.gguf else "bfloat16"
    # whatever --force says, never the run, the adapter or the base model being merged (nor a folder holding them)
    inputs = [source] + ([Path(src.base.location)] if src.base.is_local else [])
    check_can_write(target, force, what="output", inputs=inputs)
    mode = base_mode if src.method == "qlora" else "lora"
    check_adapter_shapes(src.adapter_dir, src.base)

    samples, origin, reference = [], "", None
    if verify:
        if (src.adapter_dir / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(src.adapter_dir))
        else:
            tokenizer = load_tokenizer(src.base)
        samples, origin = sample_token_ids(src.adapter_dir, tokenizer)
        with err.status("Scoring the model as trained..."):
            trained = trained_model(src, dtype)
            reference = logits_for(trained, samples)
            del trained
            gc.collect()

    with atomic_dir(target, force=force, inputs=inputs) as staging:
        with err.status(f"Merging ({mode}, {dtype})..."):
            merged = merged_model(src, dtype, mode)
        shards = write_shards(merged, staging, max_shard_size)
        merged.config.save_pretrained(str(staging))
        copy_tokenizer(src, staging)
        tokenizer = AutoTokenizer.from_pretrained(str(staging))
        eos = write_generation_config(merged, tokenizer, staging)
        del merged
        gc.collect()

        gap = None
        if reference is not None:
            with err.status("Measuring the merge gap..."):
                reloaded = AutoModelForCausalLM.from_pretrained(str(staging)).eval()
                gap = compare_logits(reference, logits_for(reloaded, samples))
                del reloaded
            gap.update(samples=origin, tolerance=TOLERANCE[dtype] if mode != "original" else None)
            if mode != "original" and gap["mean_kl"] > TOLERANCE[dtype]:
                raise ModelError(
                    f"the merged model differs from the trained one: mean KL {gap['mean_kl']:.2e} > tolerance "
                    f"{TOLERANCE[dtype]:.0e} ({dtype}); nothing was written",
                    hint="try --dtype float32, and check that the base model is the one the run was trained on")
        manifest = MergeManifest(
            stage="merge", status="complete", created_at=now(), source=str(source.resolve()),
            base_model=src.base.record(), lineage=src.lineage, method=src.method, mode=mode, dtype=dtype,
            shards=shards, gap=gap, versions=package_versions())
        write_model_card(staging / README_FILE, src.base.name, ["lorakit", "merged"],
                         card_text(manifest, target, eos), library_name="transformers")
        write_manifest(staging, manifest)
    info(f"Merged model written to {target} ({shards} shard{'s' if shards > 1 else ''})")
    return MergeResult(target, mode, dtype, gap, manifest)
