"""Rich tables for an estimate and for the per-GPU verdicts, and `render` for the vram-estimate command."""

from __future__ import annotations

from rich.table import Table

from lorakit.console import info, out, print_json
from lorakit.vram.command import EstimateReport
from lorakit.vram.estimate import ALLOCATOR_SLACK, GIB, Estimate
from lorakit.vram.plan import UTILIZATION, GpuVerdict


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def breakdown_table(est: Estimate) -> Table:
    s = est.setup
    targets = ",".join(s.lora_targets) if s.method != "full" else "-"
    extras = [x for x in (
        f"{s.quant} base" if s.quant and s.method != "qlora" else "",
        "activation offloading" if s.activation_offloading else "",
        "optimizer in backward" if s.optimizer_in_backward else "",
        f"per GPU of {s.num_gpus} ({s.strategy})" if s.num_gpus > 1 else "") if x]
    title = (f"{est.model}: {s.method}, {s.dtype}{' mixed' if s.mixed_precision else ''}, stage {s.stage}, "
             f"seq {s.seq_len} x batch {s.batch_size}, checkpointing {'on' if s.grad_checkpointing else 'off'}, "
             f"{s.optimizer}, attn {s.attn}, loss {s.loss}, LoRA r={s.lora_r} on {targets}"
             + "".join(f", {x}" for x in extras))
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
    table.add_row("reserved peak (allocator cache)", _gib(est.reserved), "", f"allocated x {ALLOCATOR_SLACK:.2f}")
    table.add_row("[bold]GPU total[/bold]" + (" per GPU" if s.num_gpus > 1 else ""),
                  f"[bold]{_gib(est.total)}[/bold]", "", "reserved + paged states + CUDA context")
    if est.host:
        table.add_row("pinned host RAM (offloaded)", _gib(est.host), "host", "not GPU memory")
    return table


def gpu_table(verdicts: list[GpuVerdict]) -> Table:
    method = verdicts[0].estimate.setup.method if verdicts else "lora"
    gpus = verdicts[0].estimate.setup.num_gpus if verdicts else 1
    table = Table(title=("Per GPU" if gpus == 1 else f"Each of {gpus} GPUs ({verdicts[0].estimate.setup.strategy})")
                  + f" (time assumes {UTILIZATION[method]:.0%} model FLOPs utilization of the dense "
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


def render(report: EstimateReport, json_out: bool) -> None:
    """Print the report: JSON on stdout, or the tables (notes on stderr)."""
    for note in report.notes:
        info(note)
    if json_out:
        print_json(report.to_dict())
        return
    if report.source != "catalog":
        info(f"Shape from {report.source}")
    out.print(breakdown_table(report.estimate))
    if report.verdicts:
        out.print(gpu_table(report.verdicts))
        if len(report.verdicts) == 1:
            for line in suggestion_lines(report.verdicts[0]):
                out.print(line)
    if report.comparisons:
        out.print("[bold]More than one GPU[/bold] (best strategy each; time at the strategy's scaling efficiency):")
        for item in report.comparisons:
            out.print(f"  - {item['line']}")
