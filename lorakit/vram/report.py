"""Rich tables for an estimate and for the per-GPU verdicts."""

from __future__ import annotations

from rich.table import Table

from lorakit.vram.estimate import GIB, Estimate
from lorakit.vram.plan import UTILIZATION, GpuVerdict


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def breakdown_table(est: Estimate) -> Table:
    s = est.setup
    targets = ",".join(s.lora_targets) if s.method != "full" else "-"
    title = (f"{est.model}: {s.method}, {s.dtype}{' mixed' if s.mixed_precision else ''}, stage {s.stage}, "
             f"seq {s.seq_len} x batch {s.batch_size}, checkpointing {'on' if s.grad_checkpointing else 'off'}, "
             f"{s.optimizer}, attn {s.attn}, loss {s.loss}, LoRA r={s.lora_r} on {targets}")
    table = Table(title=title, title_justify="left")
    table.add_column("term")
    table.add_column("GiB", justify="right")
    table.add_column("when")
    table.add_column("how")
    for term in est.terms:
        table.add_row(term.label, _gib(term.bytes), term.phase, term.note)
    table.add_section()
    table.add_row("[bold]allocated peak[/bold] (torch)", f"[bold]{_gib(est.allocated)}[/bold]", est.peak_phase,
                  "persistent + max(forward/backward, optimizer step)")
    table.add_row("reserved peak (allocator cache)", _gib(est.reserved), "", "allocated x 1.10")
    table.add_row("[bold]GPU total[/bold]", f"[bold]{_gib(est.total)}[/bold]", "",
                  "reserved + paged states + CUDA context")
    return table


def gpu_table(verdicts: list[GpuVerdict]) -> Table:
    method = verdicts[0].estimate.setup.method if verdicts else "lora"
    table = Table(title=f"Per GPU (time assumes {UTILIZATION[method]:.0%} model FLOPs utilization of the dense "
                        f"16-bit tensor peak)", title_justify="left")
    for column, justify in [("GPU", "left"), ("memory", "right"), ("needs", "right"), ("fits", "left"),
                            ("margin", "right"), ("max micro-batch", "right"), ("max seq len", "right"),
                            ("h / 1M tokens", "right")]:
        table.add_column(column, justify=justify)
    for v in verdicts:
        table.add_row(v.gpu.name, f"{v.gpu.memory_gib:.1f}", _gib(v.estimate.total),
                      "[green]yes[/green]" if v.fits else "[red]no[/red]", f"{v.margin_gib:+.1f}",
                      str(v.max_batch), str(v.max_seq_len), f"{v.hours_per_million_tokens:.2f}")
    return table


def suggestion_lines(v: GpuVerdict) -> list[str]:
    if v.fits:
        return []
    if not v.suggestions:
        return [f"Nothing lorakit can change makes this fit on a {v.gpu.name}: use a larger GPU or a smaller model."]
    lines = [f"To fit on a {v.gpu.name} ({v.gpu.memory_gib:.1f} GiB), cheapest first:"]
    lines += [f"  - {s['change']}  -> {s['total_gib']:.2f} GiB" for s in v.suggestions]
    return lines
