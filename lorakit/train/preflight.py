"""Before loading weights: estimate the run's GPU memory, print it, and stop early on a GPU that is too small."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorakit.console import info
from lorakit.errors import LorakitError, ResourceError
from lorakit.vram.catalog import GPU
from lorakit.vram.estimate import GIB, estimate
from lorakit.vram.plan import suggestions
from lorakit.vram.resolve import resolve_shape, setup_from_recipe

# Above this share of the GPU's memory a run is "tight": fragmentation and the estimate's error eat the rest.
TIGHT_SHARE = 0.9


@dataclass
class PreflightResult:
    total_gib: float
    allocated_gib: float
    device_gib: float | None
    precompute_ref_log_probs: bool = False

    def metrics(self) -> dict[str, Any]:
        return {"estimate_total_gib": round(self.total_gib, 3), "estimate_allocated_gib": round(self.allocated_gib, 3)}


def _cuda_memory_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return total / 1024**3


def choose_precompute(device_gib: float | None, with_reference_gib: float, precomputed_gib: float) -> tuple[bool, str]:
    """`precompute_ref_log_probs: auto`: whether DPO scores the reference once before training, and why.

    Precomputing costs one extra pass over the data and freezes the reference's dropout-free log-probs; it only pays
    when the reference forward is what would push a run past the GPU's memory.
    """
    if device_gib is None:
        return False, "no CUDA GPU to be short of"
    if with_reference_gib <= TIGHT_SHARE * device_gib:
        return False, f"{with_reference_gib:.1f} GiB fits in {device_gib:.1f} GiB with the reference forward"
    if precomputed_gib >= with_reference_gib:
        return False, "precomputing would not lower the estimate"
    return True, (f"auto: {with_reference_gib:.1f} GiB with the reference forward is tight on "
                  f"{device_gib:.1f} GiB; {precomputed_gib:.1f} GiB without it")


def per_gpu(setup) -> str:
    return f", per GPU of {setup.num_gpus} with {setup.strategy}" if setup.num_gpus > 1 else ""


def preflight(recipe, device: str, enabled: bool = True, model: str | None = None,
              plan=None) -> PreflightResult | None:
    """The vram-estimate of this recipe; on CUDA, a ResourceError with the fixes when it cannot fit.

    `plan` (lorakit.train.strategies.Plan): the processes and strategy the run trains with; each process checks its
    own GPU.
    """
    from dataclasses import replace

    name, setup = setup_from_recipe(recipe)
    if plan is not None:
        # per GPU, as the run is actually launched (an accelerate config may say another strategy than the recipe)
        setup = replace(setup, num_gpus=plan.num_processes, strategy=plan.strategy)
    try:
        shape = resolve_shape(model or name)
    except LorakitError:
        info("GPU memory estimate: skipped (model shape not readable offline)")
        return None
    est = estimate(shape, setup)
    result = PreflightResult(est.total / GIB, est.allocated / GIB, None)
    if device != "cuda":
        info(f"GPU memory estimate: {result.total_gib:.2f} GiB on a CUDA GPU ({setup.method}, seq "
             f"{setup.seq_len} x {setup.batch_size}{per_gpu(setup)}); running on the {device}, so not checked")
        return result
    result.device_gib = _cuda_memory_gib()
    if recipe.stage == "dpo" and recipe.dpo.precompute_ref_log_probs == "auto":
        precomputed = estimate(shape, replace(setup, stage="dpo-precomputed"))
        chosen, why = choose_precompute(result.device_gib, result.total_gib, precomputed.total / GIB)
        if chosen:
            info(f"Reference log-probs precomputed before training ({why})")
            setup, est = replace(setup, stage="dpo-precomputed"), precomputed
            result = PreflightResult(est.total / GIB, est.allocated / GIB, result.device_gib, True)
    info(f"GPU memory estimate{per_gpu(setup)}: {result.total_gib:.2f} GiB of {result.device_gib:.1f} GiB "
         f"(allocated peak {result.allocated_gib:.2f} GiB; `lorakit vram-estimate --recipe` shows every term)")
    if enabled and result.device_gib is not None and result.total_gib > result.device_gib:
        gpu = GPU("this", "this GPU", result.device_gib, 1.0)
        fixes = suggestions(shape, replace(setup), gpu)
        hint = ("; ".join(f"{f['change']} ({f['total_gib']:.1f} GiB)" for f in fixes[:3]) if fixes
                else "use a larger GPU or a smaller model")
        raise ResourceError(f"this run needs ~{result.total_gib:.1f} GiB of GPU memory, the GPU has "
                            f"{result.device_gib:.1f} GiB", hint=f"{hint}; or --no-preflight to try anyway")
    return result
