"""Every place lorakit relies on a private or undocumented detail of a library, fenced behind a named function.

Each hook says which library versions it was checked against and fails loudly, naming the hook and the versions,
when the detail it relies on is gone: an upgrade then announces itself with a clear message instead of training
silently wrong. `tests/unit/test_compat.py` checks every hook against the installed libraries.

Checked against: transformers 5.20-5.24, trl 1.16, peft 0.21, bitsandbytes 0.50, datasets 4.x-5.2, torch 2.13,
gguf 0.19.
"""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import version
from typing import Any, Iterator

from lorakit.errors import LorakitError


class LibraryChanged(LorakitError):
    """A library no longer has a detail lorakit relies on: the installed version is outside the checked range."""


def _changed(hook: str, package: str, checked: str, what: str) -> LibraryChanged:
    return LibraryChanged(
        f"{hook}: {package} {version(package)} no longer provides {what} (lorakit was checked with {package} "
        f"{checked})", hint=f"install a checked version: pip install '{package}{checked}'")


# ---------------------------------------------------------------------------------------------------------------
# TRL


def is_pretokenized_preferences(dataset) -> bool:
    """lorakit hands DPOTrainer rows it tokenized itself (prompt_ids/chosen_ids/rejected_ids, TRL's own column
    names); `_prepare_dataset` must then pass them through untouched. (trl 1.16: DPOTrainer._prepare_dataset)"""
    return "prompt_ids" in dataset.column_names


def check_trainer_hooks(trainer_class) -> None:
    """The private DPOTrainer / Trainer methods lorakit overrides still exist with the arguments it passes.

    trl 1.16: `DPOTrainer._prepare_dataset(dataset, processing_class, args, dataset_name)`,
    `DPOTrainer._precompute_ref_logps(dataset, name, batch_size)` (called in the constructor when
    precompute_ref_log_probs is set; lorakit's plain head takes effect before it); transformers 5.x:
    `Trainer._get_train_sampler(train_dataset=None)` (lorakit's length grouping, SFT and DPO: lorakit.train.length_groups).
    """
    from transformers import Trainer
    from trl import DPOTrainer

    expected = {(DPOTrainer, "_prepare_dataset", "trl", ">=1.16,<1.17"):
                ["self", "dataset", "processing_class", "args", "dataset_name"],
                (DPOTrainer, "_precompute_ref_logps", "trl", ">=1.16,<1.17"): ["self", "dataset", "name", "batch_size"],
                (Trainer, "_get_train_sampler", "transformers", ">=5.20,<5.25"): ["self", "train_dataset"]}
    for (owner, name, package, checked), params in expected.items():
        method = getattr(owner, name, None)
        if method is None or list(inspect.signature(method).parameters) != params:
            raise _changed(f"{trainer_class.__name__}.{name}", package, checked,
                           f"{owner.__name__}.{name}({', '.join(params[1:])})")


def preference_collator_class():
    """TRL's DPO collator: it pads the concatenated chosen/rejected rows (right padding, `attention_mask`) that
    DPOTrainer's loss reads; lorakit's padding-free pairs subclass it and add the packed layout of the same batch.
    (trl 1.16: trl.trainer.dpo_trainer.DataCollatorForPreference.torch_call(examples))"""
    try:
        from trl.trainer.dpo_trainer import DataCollatorForPreference
    except ImportError:
        raise _changed("padding-free pairs", "trl", ">=1.16,<1.17",
                       "trl.trainer.dpo_trainer.DataCollatorForPreference") from None
    if not callable(getattr(DataCollatorForPreference, "torch_call", None)):
        raise _changed("padding-free pairs", "trl", ">=1.16,<1.17", "DataCollatorForPreference.torch_call")
    return DataCollatorForPreference


def attention_implementation(config) -> str:
    """The attention kernel a loaded model runs (transformers 5.x: config._attn_implementation, set at load)."""
    return getattr(config, "_attn_implementation", None) or "sdpa"


FUSED_OUTPUT_FIELDS = ("loss", "log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def fused_output_class():
    """The output TRL's trainers expect from `model(..., fused_lm_head=True)`, so the plain CPU head can answer it.
    (trl 1.16: trl.trainer.utils.FusedCausalLMOutput with the fields above)"""
    try:
        from trl.trainer.utils import FusedCausalLMOutput
    except ImportError:
        raise _changed("plain LM head", "trl", ">=1.16,<1.17", "trl.trainer.utils.FusedCausalLMOutput") from None
    fields = set(getattr(FusedCausalLMOutput, "__dataclass_fields__", {}))
    missing = [name for name in FUSED_OUTPUT_FIELDS if name not in fields]
    if missing:
        raise _changed("plain LM head", "trl", ">=1.16,<1.17", f"FusedCausalLMOutput fields {', '.join(missing)}")
    return FusedCausalLMOutput


def reference_adapter_pairs(model) -> Iterator[tuple[Any, Any]]:
    """(ref parameter, policy parameter) pairs of a DPO model whose reference is TRL's frozen "ref" adapter.

    trl 1.16 adds the reference as a PEFT adapter named "ref" beside "default", so its parameters are named like the
    policy's with `.ref.` for `.default.`.
    """
    params = dict(model.named_parameters())
    for name, param in params.items():
        if ".ref." in name:
            twin = params.get(name.replace(".ref.", ".default."))
            if twin is None:
                raise _changed("reference adapter", "trl", ">=1.16,<1.17",
                               f"a 'ref' adapter parameter named like the policy's ({name})")
            yield param, twin


def match_reference_adapter_dtype(model) -> None:
    """Give the frozen 'ref' adapter the dtype of the trainable one it copies.

    For 4-bit bases TRL casts trainable LoRA weights to bf16 (as the QLoRA paper does) after it made the fp32 'ref'
    copy: the SFT adapter was trained and saved in bf16, so the reference must compute in bf16 too, or policy and
    reference disagree before the first update.
    """
    for ref, policy in reference_adapter_pairs(model):
        if ref.dtype != policy.dtype:
            ref.data = ref.data.to(policy.dtype)


# ---------------------------------------------------------------------------------------------------------------
# transformers Trainer checkpoints and torch elastic


def checkpoint_rng_files(processes: int) -> list[str]:
    """The RNG-state files a checkpoint written by `processes` training processes holds, one per process.
    (transformers 5.x: Trainer._save_rng_state writes rng_state_{process_index}.pth when world_size > 1)"""
    return [f"rng_state_{rank}.pth" for rank in range(processes)]


def elastic_failures(log: str) -> list[tuple[int, int]]:
    """(rank, exit code) of every training process that failed, from the failure report torch's elastic launcher
    (under accelerate launch) prints; [] when there is none. A negative exit code is the signal that killed the
    process. (torch 2.13: ChildFailedError's report, one block per failure with `rank : N (local_rank: M)` and
    `exitcode : C (pid: P)` lines)"""
    import re

    _, found, report = log.rpartition("ChildFailedError")
    if not found:
        return []
    pairs = re.findall(r"rank\s*:\s*(\d+)[^\n]*\n[^\n]*exitcode\s*:\s*(-?\d+)", report)
    seen: dict[int, int] = {}
    for rank, code in pairs:
        seen.setdefault(int(rank), int(code))
    return list(seen.items())


# ---------------------------------------------------------------------------------------------------------------
# liger-kernel


def liger_apply_function(model_type: str | None):
    """Liger's patching function for a model type (`apply_liger_kernel_to_<type>(rope=, rms_norm=, swiglu=, ...,
    model=)`), or None when Liger has none. Only keyword arguments it accepts are passed on: some types have GeGLU
    instead of SwiGLU, some no RoPE kernel. (liger-kernel 0.5-0.6: monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN)"""
    import functools

    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return None
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type or "")
    if apply is None:
        return None
    accepted = set(inspect.signature(apply).parameters)
    if "model" not in accepted:
        raise _changed("Liger kernels", "liger-kernel", ">=0.5,<0.7", f"{apply.__name__}(model=...)")

    @functools.wraps(apply)
    def call(**kwargs):
        return apply(**{k: v for k, v in kwargs.items() if k in accepted})

    return call


# ---------------------------------------------------------------------------------------------------------------
# bitsandbytes


def keep_4bit_training_kernel(model):
    """Keep bitsandbytes' 4-bit layers on the kernel they were trained with when they run on a CPU.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight in place at its first no-grad forward, with
    its absmax rounded to bf16, and the repack crashes when in_features is not a multiple of the blocksize. So an
    adapter would be evaluated, merged-against and verified on different arithmetic than it was trained on (and the
    tiny models fail outright); the training-mode kernel is slower on those CPUs but the same on every machine.
    (bitsandbytes 0.50: Linear4bit.support_avx512bf16_for_cpu, set in __init__, read in forward)
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            if not hasattr(module, "support_avx512bf16_for_cpu"):
                raise _changed("4-bit CPU kernel", "bitsandbytes", ">=0.50,<0.51",
                               "Linear4bit.support_avx512bf16_for_cpu")
            module.support_avx512bf16_for_cpu = False
    return model


def quiet_bitsandbytes_cpu_kernel_advice() -> None:
    """On AVX512-BF16 CPUs bitsandbytes looks for a hub-downloaded kernel for its repacked 4-bit inference layout and
    complains at import when it is absent; lorakit keeps the training layout (keep_4bit_training_kernel), so that
    kernel would never run. The lookup goes through the `kernels` package, which says at every import, offline, that
    it skips the hub's publisher check for that kernel: nothing a user can act on, so that one note is dropped and
    the package's other warnings still show. (bitsandbytes 0.50: logger bitsandbytes.backends.cpu.ops; kernels 0.19:
    logger kernels._internals.hf_hub)"""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    hub_logger = logging.getLogger(KERNELS_HUB_LOGGER)
    if not any(isinstance(f, _OfflineTrustNoteFilter) for f in hub_logger.filters):
        hub_logger.addFilter(_OfflineTrustNoteFilter())


KERNELS_HUB_LOGGER = "kernels._internals.hf_hub"  # kernels 0.19: where its offline publisher-check note is logged
KERNELS_OFFLINE_TRUST_NOTE = "Skipping publisher trust check for "


class _OfflineTrustNoteFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KERNELS_OFFLINE_TRUST_NOTE)


INT8_CAST_LOGGER = "bitsandbytes.autograd._functions"  # bitsandbytes 0.50: LLM.int8's per-layer cast warning


# ---------------------------------------------------------------------------------------------------------------
# datasets


def dataset_fingerprint(dataset) -> str:
    """datasets' content fingerprint of a loaded hub dataset: what its cache is keyed by.
    (datasets 4.x-5.x: Dataset._fingerprint)"""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not isinstance(fingerprint, str):
        raise _changed("hub dataset fingerprint", "datasets", ">=4,<6", "Dataset._fingerprint")
    return fingerprint


# ---------------------------------------------------------------------------------------------------------------
# GGUF files as model sources (transformers' GGUF loader, gguf-py)


def gguf_loadable_architectures() -> list[str]:
    """GGUF `general.architecture` values transformers' GGUF loader maps to a model class (a few keys of its table
    are metadata groups, not architectures). (transformers 5.20-5.24:
    modeling_gguf_pytorch_utils.GGUF_SUPPORTED_ARCHITECTURES)"""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        raise _changed("GGUF architectures", "transformers", ">=5.20,<5.25",
                       "modeling_gguf_pytorch_utils.GGUF_SUPPORTED_ARCHITECTURES") from None
    return [arch for arch in GGUF_SUPPORTED_ARCHITECTURES if arch not in ("general", "tokenizer")]


def gguf_dequantizable_types() -> set[str]:
    """GGML tensor types gguf-py can dequantize (besides F32/F16), which is what transformers' loader calls.
    (gguf 0.17-0.19: gguf.quants._type_traits, keyed by GGMLQuantizationType)"""
    import gguf.quants

    traits = getattr(gguf.quants, "_type_traits", None)
    if not isinstance(traits, dict) or not traits:
        raise _changed("GGUF dequantizable types", "gguf", ">=0.17,<0.20", "gguf.quants._type_traits")
    return {kind.name for kind in traits}


def route_gguf_loading_bar() -> None:
    """Make transformers' GGUF loader draw its "Converting and de-quantizing GGUF tensors" bar through transformers'
    own tqdm, which follows transformers' progress-bar switch (`disable_progress_bar()`, HF_HUB_DISABLE_PROGRESS_BARS:
    the CLI turns it off, so lorakit's own status line is the only progress shown). The loader imports
    `tqdm.auto.tqdm` directly, so the switch never reached it. Call before `from_pretrained(..., gguf_file=...)`.
    (transformers 5.20-5.25: modeling_gguf_pytorch_utils.tqdm, used by load_gguf_checkpoint)"""
    from transformers import modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging as transformers_logging

    if not callable(getattr(gguf_loading, "tqdm", None)) or not callable(getattr(transformers_logging, "tqdm", None)):
        raise _changed("GGUF loading progress", "transformers", ">=5.20,<5.26", "modeling_gguf_pytorch_utils.tqdm")
    gguf_loading.tqdm = transformers_logging.tqdm


def drop_gguf_quantizer(model) -> None:
    """Make a model loaded from GGUF an ordinary one, so it can be saved, trained and merged.

    transformers 5.24 attaches a `GgufHfQuantizer` to every GGUF-loaded model, even when every weight was
    dequantized into a plain nn.Linear (the legacy path, or `GgufConfig(dequantize=True)`), and its
    `is_serializable()` is always False: `save_pretrained` then raises "The model is quantized with gguf and is not
    serializable". `remove_quantization_config` detaches it (quantizer, config.quantization_config, is_quantized).
    transformers 5.20-5.23 attach none. (transformers 5.24: HfQuantizer.remove_quantization_config(model))
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if type(quantizer).__name__ != "GgufHfQuantizer" or not hasattr(quantizer, "remove_quantization_config"):
        raise _changed("GGUF import", "transformers", ">=5.20,<5.25",
                       f"a removable GGUF quantizer on GGUF-loaded models (found {type(quantizer).__name__})")
    quantizer.remove_quantization_config(model)
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise _changed("GGUF import", "transformers", ">=5.20,<5.25", "HfQuantizer.remove_quantization_config")


def check_hooks() -> list[str]:
    """Exercise every hook that can be checked without a model; returns their names (the compat test calls it)."""
    from trl import DPOTrainer

    check_trainer_hooks(DPOTrainer)
    fused_output_class()
    preference_collator_class()
    gguf_loadable_architectures()
    gguf_dequantizable_types()
    return ["check_trainer_hooks", "fused_output_class", "preference_collator_class", "gguf_loadable_architectures",
            "gguf_dequantizable_types"]
