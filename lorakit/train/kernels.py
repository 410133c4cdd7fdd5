"""The GPU path's optional kernels: Liger (RMSNorm, SwiGLU, RoPE) and torch.compile, chosen and reported.

Liger's kernels are Triton, so they run on CUDA only; on the CPU nothing changes. Its fused linear cross-entropy is
not used: TRL 1.16 already gives its trainers a fused LM head that never builds the (tokens x vocabulary) logits (and
refuses Liger's, which would replace the forward it patches). The kernels are applied to the loaded model through
Liger's own per-model functions, the same ones `AutoLigerKernelForCausalLM` and transformers' `use_liger_kernel` use,
instead of TRL's `use_liger_kernel`, which TRL 1.16 deprecates. `train.compile` is transformers' `torch_compile`.
Flash-attention is chosen at load time (lorakit.model.resolve_attn).
"""

from __future__ import annotations

from lorakit.compat import liger_apply_function
from lorakit.console import warn
from lorakit.errors import ConfigError
from lorakit.train.speed import has_liger

LIGER_KERNELS = ("rms_norm", "swiglu", "rope")


def choose_liger(setting, device: str, installed: bool, model_type: str | None, supported: bool) -> tuple[bool, str]:
    """Whether Liger's kernels are applied, and why. Pure, so the choice is tested on any machine."""
    if setting is False:
        return False, "train.liger: false in the recipe"
    if device != "cuda":
        if setting is True:
            warn(f"train.liger: true, but Liger's kernels are Triton (CUDA only); the {device} run goes without them")
        return False, f"{device}: Liger's Triton kernels run on CUDA only"
    if not installed:
        if setting is True:
            raise ConfigError("train.liger is true, but liger-kernel is not installed",
                              hint="pip install liger-kernel, or set train.liger: auto")
        return False, "liger-kernel not installed (pip install liger-kernel)"
    if not supported:
        if setting is True:
            raise ConfigError(f"train.liger is true, but liger-kernel has no kernels for {model_type} models",
                              hint="set train.liger: auto")
        return False, f"liger-kernel has no kernels for {model_type} models"
    return True, "Liger RMSNorm, SwiGLU and RoPE kernels (LM head: TRL's fused one)"


def choose_compile(setting: bool, device: str) -> tuple[bool, str]:
    if not setting:
        return False, "off (train.compile: true compiles the model with torch.compile)"
    if device == "cpu":
        return True, "torch.compile on the CPU (inductor's C++ code; the first steps pay the compilation)"
    return True, "torch.compile (the first steps pay the compilation; new packed-row lengths recompile)"


def apply_liger(model) -> bool:
    """Patch the loaded model (or the model under a PeftModel) with Liger's kernels; False if its type has none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    apply = liger_apply_function(base.config.model_type)
    if apply is None:
        return False
    apply(model=base, **{name: True for name in LIGER_KERNELS}, cross_entropy=False,
          fused_linear_cross_entropy=False)
    return True


def plan_kernels(train, device: str, model) -> dict[str, tuple[bool, str]]:
    """Decide and apply Liger, decide compile; {"liger": (on, why), "compile": (on, why)}."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(base.config, "model_type", None)
    installed = has_liger()
    supported = installed and device == "cuda" and liger_apply_function(model_type) is not None
    liger, liger_reason = choose_liger(train.liger, device, installed, model_type, supported)
    if liger:
        apply_liger(model)
    return {"liger": (liger, liger_reason), "compile": choose_compile(train.compile, device)}
