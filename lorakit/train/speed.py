"""Throughput choices that depend on the device and the model, made once and reported.

Measured on a 2-core CPU (bench/throughput.py): padding-free batches remove the padding that uneven chat lengths
put in every batch, and the plain cross-entropy loss is about twice as fast as TRL's tiled fused LM head there. On
CUDA the fused head is kept: it never materializes the (tokens x vocabulary) logits, which dominate memory at 128k+
vocabularies. Padding-free batching is only used after a probe on the loaded model shows that packed examples do not
attend to each other with its attention implementation. On SDPA, the packed rows then run on lorakit's per-example
attention (lorakit.train.attention), which costs sum(length^2) instead of the (sum of lengths)^2 of transformers'
block-diagonal mask, once the same probe passes with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorakit.compat import attention_implementation
from lorakit.console import warn
from lorakit.model import has_flash_attention  # noqa: F401  (moved to lorakit.model; read here too)
from lorakit.train.attention import try_per_example
from lorakit.train.distributed import on_main
from lorakit.train.plain_head import use_plain_lm_head


@dataclass
class SpeedPlan:
    """How a run computes its loss and batches its rows, and why; recorded in the manifest."""

    loss: str  # plain | fused
    padding_free: bool
    group_by_length: bool
    reasons: dict[str, str] = field(default_factory=dict)  # loss, batching, attention
    reference: str | None = None  # DPO: what the reference model is
    attention: str = "sdpa"  # the attention implementation the model trains with (lorakit.train.attention.NAME...)
    liger: bool = False  # Liger's RMSNorm/SwiGLU/RoPE kernels applied (CUDA)
    compile: bool = False  # torch.compile

    def to_manifest(self) -> dict[str, Any]:
        record = {"loss": self.loss, "padding_free": self.padding_free, "batching": self.reasons.get("batching"),
                  "attention": self.attention, "liger": self.liger, "compile": self.compile,
                  "why": dict(self.reasons)}
        if self.reference is not None:
            record["reference"] = self.reference
        return record


def choose_loss(setting: str, device: str) -> tuple[str, str]:
    if setting != "auto":
        return setting, "set in the recipe"
    if device == "cuda":
        return "fused", "CUDA: the fused LM head never builds the full logits"
    return "plain", "CPU: plain cross-entropy is about 2x faster than the tiled fused head"


def has_liger() -> bool:
    from transformers.utils import is_liger_kernel_available

    return is_liger_kernel_available()


def packing_is_exact(model, vocab_size: int, tolerance: float = 2e-2) -> bool:
    """Run three short random examples packed into one row and one by one; compare the logits.

    A model whose attention ignores the per-example position ids would let later examples attend to earlier ones,
    which shows up as large differences. Cheap: about 30 tokens through the real (possibly 4-bit) model.
    Several processes get rank 0's answer: they must batch alike, and under FSDP only rank 0 holds real weights yet.
    """
    return on_main(lambda: _packing_is_exact(model, vocab_size, tolerance))


def _packing_is_exact(model, vocab_size: int, tolerance: float) -> bool:
    import torch

    generator = torch.Generator().manual_seed(0)
    lengths = (7, 11, 5)
    device = next(model.parameters()).device
    examples = [torch.randint(0, min(vocab_size, 1000), (n,), generator=generator).to(device) for n in lengths]
    packed_ids = torch.cat(examples)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    # the sequence boundaries TRL's padding-free collator sends along (varlen kernels read them)
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    boundaries = dict(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=max(lengths), max_length_k=max(lengths))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            single = torch.cat([model(input_ids=e[None], use_cache=False).logits[0].float() for e in examples])
            packed = model(input_ids=packed_ids, position_ids=position_ids, use_cache=False).logits[0].float()
            with_bounds = model(input_ids=packed_ids, position_ids=position_ids, use_cache=False,
                                **boundaries).logits[0].float()
    except Exception as exc:  # a model that rejects packed inputs outright is not packed; say why, it may be a bug
        warn(f"packing probe failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
             "using length-grouped batches")
        return False
    finally:
        model.train(was_training)
    scale = single.abs().max().clamp(min=1.0)
    return all(bool(((logits - single).abs().max() / scale) <= tolerance) for logits in (packed, with_bounds))


def plan_speed(train, device: str, model, vocab_size: int, attention_setting: str = "auto") -> SpeedPlan:
    """SFT: the loss head, padding-free or length-grouped batches, and the attention that runs the packed rows."""
    loss, loss_reason = choose_loss(train.loss, device)
    reasons = {"loss": loss_reason}
    attention = attention_implementation(causal_lm_config(model))
    if train.micro_batch_size == 1 and train.padding_free is not True:
        # one example per batch carries no padding: nothing to remove or group (and TRL warns about it)
        return SpeedPlan(loss=loss, padding_free=False, group_by_length=False, attention=attention,
                         reasons={**reasons, "batching": "micro-batch 1: no padding to remove",
                                  "attention": f"{attention} (no packed rows)"})
    if train.padding_free is False:
        padding_free, reasons["batching"] = False, "padding_free: false in the recipe; length-grouped batches"
    else:
        exact = packing_is_exact(model, vocab_size)  # rank 0's answer for every process
        if exact:
            padding_free, reasons["batching"] = True, "padding-free (probe: packed == unpacked logits)"
        else:
            padding_free = False
            reasons["batching"] = "length-grouped batches (probe: packed examples would see each other)"
            if train.padding_free is True:
                warn("padding_free: true, but this model's attention lets packed examples see each other; "
                     "using length-grouped batches instead")
    if padding_free:
        _, reasons["attention"] = try_per_example(model, attention_setting, lambda: packing_is_exact(model, vocab_size),
                                                  compiled=bool(getattr(train, "compile", False)))
    else:
        reasons["attention"] = f"{attention} (no packed rows)"
    attention = attention_implementation(causal_lm_config(model))
    return SpeedPlan(loss=loss, padding_free=padding_free, group_by_length=not padding_free, reasons=reasons,
                     attention=attention)


def causal_lm_config(model):
    """The config of the transformers model under a PeftModel (or of the model itself)."""
    return (model.get_base_model() if hasattr(model, "get_base_model") else model).config


def trainer_speed_kwargs(plan: SpeedPlan) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"padding_free": plan.padding_free}
    if plan.group_by_length:
        kwargs["train_sampling_strategy"] = "group_by_length"
    return kwargs


def apply_loss_choice(trainer, plan: SpeedPlan) -> None:
    """The one place the loss choice takes effect, for SFT and DPO: swap TRL's fused LM head for the plain one when
    the plan says so (and the model allows it; otherwise the plan says why it stayed fused)."""
    if plan.loss != "plain":
        return
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if not use_plain_lm_head(model, want_sq_probs=bool(getattr(trainer, "use_weighting", False))):
        plan.loss = "fused"
        plan.reasons["loss"] = "this model scales or soft-caps its logits: TRL's fused head handles that"
