"""Sequence-tiled MLPs: no decoder layer ever holds a full-length MLP intermediate.

With gradient checkpointing, a long sequence's peak is one decoder layer being recomputed, and in that layer the
MLP's intermediates dominate: the gate and up projections, the activation and their product are each
`intermediate_size` wide (3.5x the hidden size in Llama-3.1-8B), for every token of the row, plus the inputs the
LoRA matrices keep. The MLP is a per-token function, so it can run over the row in tiles of tokens: each tile is a
non-reentrant `torch.utils.checkpoint` of the MLP's own forward, so forward keeps only the tile's input (a view of
the layer's normalized hidden states) and backward recomputes and differentiates one tile at a time. The
arithmetic per token is unchanged (the logits and gradients agree with the untiled model to float rounding: a test),
and the cost is one more forward of the MLP per layer. With LoRA dropout inside the MLP, the masks are drawn tile by
tile (the same distribution as one draw for the whole row, other samples), and every recompute replays its tile's
draws (checkpoint's preserved RNG state). The idea is Arctic Long Sequence Training's TiledMLP
(Snowflake), written here as a checkpoint per tile instead of a custom autograd function, so that parameter
gradients flow through autograd's ordinary graph (DDP's and FSDP's gradient hooks see one gradient per parameter).

The wrapper replaces the `forward` of each decoder layer's MLP module instance (found through
`lorakit.compat.decoder_mlps`); the module, its parameters and its state-dict names stay as they are, so PEFT's
adapters, saving and merging never see it. Rows no longer than one tile go straight to the original forward.
Whether a run tiles is decided once (`plan_tiling`), from the planner's arithmetic (`lorakit.vram.estimate`):
with `train.tiled_mlp: auto`, when gradient checkpointing is on and one layer's working set is the largest
activation term at the recipe's row length; the choice and its reason are printed and recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import replace

from lorakit.compat import decoder_mlps
from lorakit.console import warn
from lorakit.train.preflight import _cuda_memory_gib
from lorakit.vram.estimate import mlp_tile_tokens, tiling_pays
from lorakit.vram.resolve import setup_from_recipe
from lorakit.vram.shapes import ShapeError, shape_from_config

MARK = "lorakit_tiled_mlp"  # attribute on a wrapped forward: the tile size


def tiled(forward, tile: int):
    """`forward` (an MLP's, called with one hidden-states tensor) run over the sequence dimension in tiles."""
    import torch
    from torch.utils.checkpoint import checkpoint

    def run(hidden, *args, **kwargs):
        if args or kwargs or not isinstance(hidden, torch.Tensor) or hidden.dim() < 2 \
                or hidden.numel() <= tile * hidden.shape[-1]:
            return forward(hidden, *args, **kwargs)
        # The MLP is a function of each token alone, so the tiles are runs of tokens of the flattened rows. Each tile
        # is viewed as a fresh (1, tokens, hidden) tensor: a slice along the sequence keeps its parent's batch stride,
        # and matmul then cannot fold it into one mm for the weight-gradient path (it falls back to bmm, much slower).
        flat = hidden.reshape(-1, hidden.shape[-1])
        pieces = [piece.view(1, *piece.shape) for piece in flat.split(tile)]
        if torch.is_grad_enabled():
            outputs = [checkpoint(forward, piece, use_reentrant=False) for piece in pieces]
        else:  # evaluation: no graph to keep, and the tiles still bound the transient intermediates
            outputs = [forward(piece) for piece in pieces]
        out = torch.cat(outputs, dim=1)
        return out.view(*hidden.shape[:-1], out.shape[-1])

    setattr(run, MARK, tile)
    run.__wrapped__ = forward
    return run


def apply_tiled_mlp(model, tile: int) -> int:
    """Tile every decoder layer's MLP of `model` (or of the model under a PeftModel); returns how many."""
    mlps = decoder_mlps(model)
    for mlp in mlps:
        current = mlp.forward
        original = getattr(current, "__wrapped__", current) if getattr(current, MARK, None) else current
        mlp.forward = tiled(original, tile)
    return len(mlps)


def remove_tiled_mlp(model) -> None:
    for mlp in decoder_mlps(model):
        if getattr(mlp.forward, MARK, None):
            del mlp.forward  # the instance attribute: the class's forward is back


def tiling_is_exact(model, tolerance: float = 1e-3) -> bool:
    """Run the first decoder MLP of the loaded model over a short random row tiled (tiles of 4 tokens) and whole;
    compare. Cheap (13 tokens), and catches an MLP that is not a per-token function."""
    import torch

    mlps = decoder_mlps(model)
    if not mlps:
        return False
    mlp = mlps[0]
    forward = getattr(mlp.forward, "__wrapped__", mlp.forward)
    parameter = next(mlp.parameters())
    dtype = parameter.dtype if parameter.is_floating_point() else next(
        p.dtype for p in model.parameters() if p.is_floating_point())
    hidden_size = model.config.get_text_config().hidden_size
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 13, hidden_size, generator=generator).to(parameter.device, dtype)
    with torch.no_grad():
        whole = forward(sample).float()
        pieces = tiled(forward, 4)(sample).float()
    scale = whole.abs().max().clamp(min=1e-6)
    return bool(((pieces - whole).abs().max() / scale) <= tolerance)


def plan_tiling(setting, recipe, model, device: str, precision: str, strategy: str = "ddp",
                row_tokens: int | None = None) -> tuple[bool, int, str]:
    """Whether this run tiles its MLPs (and wraps them when it does), the tile size, and why: the planner's
    arithmetic decides `auto` (lorakit.vram.estimate.tiling_pays) for the run's longest row (`row_tokens`, default
    the recipe's micro-batch at data.max_length) on this device."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    tile = mlp_tile_tokens(config.hidden_size)
    if setting is False:
        return False, tile, "train.tiled_mlp: false in the recipe"
    if not decoder_mlps(model):
        if setting is True:
            warn("train.tiled_mlp: true, but this model has no dense per-token MLP to tile (mixture of experts, or "
                 "no transformers decoder layers); training without")
        return False, tile, "no dense decoder MLP to tile"
    if strategy in ("fsdp", "zero3"):
        if setting is True:
            warn(f"train.tiled_mlp: true is not used under {strategy}, which gathers each layer's sharded weights "
                 "for every forward it runs")
        return False, tile, f"{strategy}: not combined with sharded weights"
    why = "train.tiled_mlp: true in the recipe"
    if setting == "auto":
        if getattr(recipe.train, "compile", False):
            return False, tile, "train.compile: the tiles' checkpoints would break the compiled graph"
        try:
            shape = shape_from_config(config.to_dict(), "model")
        except ShapeError:
            return False, tile, "the planner cannot size this model"
        _, setup = setup_from_recipe(recipe)
        # both of lorakit's heads stream the vocabulary (TRL's fused head, or the plain head over a frozen LM head)
        setup = replace(setup, device="cuda" if device == "cuda" else "cpu", loss="fused",
                        dtype=precision if precision in ("bf16", "fp16", "fp32") else setup.dtype)
        if row_tokens:
            setup = replace(setup, seq_len=row_tokens, batch_size=1)
        pays, why = tiling_pays(shape, setup, cuda_memory_bytes() if device == "cuda" else None)
        if not pays:
            return False, tile, why
    if not tiling_is_exact(model):
        warn("the tiled MLP changed this model's MLP outputs (not a per-token function?); training without tiles")
        return False, tile, "probe: tiled != untiled MLP output"
    count = apply_tiled_mlp(model, tile)
    return True, tile, f"{count} MLPs in tiles of {tile} tokens ({why})"


def cuda_memory_bytes() -> float | None:
    gib = _cuda_memory_gib()
    return None if gib is None else gib * 1024**3
