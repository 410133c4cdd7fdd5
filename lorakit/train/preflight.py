"""Before loading weights: estimate the run's GPU memory, print it, and stop early on a GPU that is too small."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorakit.console import info
from lorakit.errors import LorakitError, ResourceError


@dataclass
class PreflightResult:
    total_gib: float
    allocated_gib: float
    device_gib: float | None

    def metrics(self) -> dict[str, Any]:
        return {"estimate_total_gib": round(self.total_gib, 3), "estimate_allocated_gib": round(self.allocated_gib, 3)}


def _cuda_memory_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return total / 1024**3


def preflight(recipe, device: str, enabled: bool = True, model: str | None = None) -> PreflightResult | None:
    """The vram-estimate of this recipe; on CUDA, a ResourceError with the fixes when it cannot fit."""
    from dataclasses import replace

    from lorakit.vram.catalog import GPU
    from lorakit.vram.estimate import GIB, estimate
    from lorakit.vram.plan import suggestions
    from lorakit.vram.resolve import resolve_shape, setup_from_recipe

    name, setup = setup_from_recipe(recipe)
    try:
        shape = resolve_shape(model or name)
    except LorakitError:
        info("GPU memory estimate: skipped (model shape not readable offline)")
        return None
    est = estimate(shape, setup)
    result = PreflightResult(est.total / GIB, est.allocated / GIB, None)
    if device != "cuda":
        info(f"GPU memory estimate: {result.total_gib:.2f} GiB on a CUDA GPU ({setup.method}, seq "
             f"{setup.seq_len} x {setup.batch_size}); running on the {device}, so not checked")
        return result
    result.device_gib = _cuda_memory_gib()
    info(f"GPU memory estimate: {result.total_gib:.2f} GiB of {result.device_gib:.1f} GiB "
         f"(allocated peak {result.allocated_gib:.2f} GiB; `lorakit vram-estimate --recipe` shows every term)")
    if enabled and result.device_gib is not None and result.total_gib > result.device_gib:
        gpu = GPU("this", "this GPU", result.device_gib, 1.0)
        fixes = suggestions(shape, replace(setup), gpu)
        hint = ("; ".join(f"{f['change']} ({f['total_gib']:.1f} GiB)" for f in fixes[:3]) if fixes
                else "use a larger GPU or a smaller model")
        raise ResourceError(f"this run needs ~{result.total_gib:.1f} GiB of GPU memory, the GPU has "
                            f"{result.device_gib:.1f} GiB", hint=f"{hint}; or --no-preflight to try anyway")
    return result
