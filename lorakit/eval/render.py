"""The tables `lorakit eval` prints."""

from __future__ import annotations

import os

from lorakit.console import format_value, out


def print_eval(report: dict) -> None:
    """The eval tables: scores per candidate, each stage against its parent, generations side by side."""
    from rich.table import Table

    metrics = [m for m in ("loss", "perplexity", "reward_accuracy", "reward_margin", "logp_gap")
               if any(m in c for c in report["candidates"])]
    benchmark_metrics = sorted({k for c in report["candidates"] for k in c if "/" in k})
    def candidate_table(title: str, columns: list[str]) -> Table:
        table = Table(title=title, title_justify="left")
        for column in ["candidate", "kind", *columns]:
            table.add_column(column)
        for c in report["candidates"]:
            table.add_row(_short(c["name"]), c["kind"], *[format_value(c.get(m, "-")) for m in columns])
        return table

    if metrics or not benchmark_metrics:
        out.print(candidate_table("eval", metrics))
    if benchmark_metrics:
        out.print(candidate_table("benchmarks (lm-eval)", benchmark_metrics))
    if report["regressions"]:
        reg = Table(title="each stage against its parent", title_justify="left")
        for column in ("stage", "parent", "metric", "change", "verdict"):
            reg.add_column(column)
        for r in report["regressions"]:
            verdict = "[red]worse[/red]" if r["worse"] else "[green]better or equal[/green]"
            reg.add_row(_short(r["candidate"]), _short(r["parent"]), r["metric"], f"{r['change']:+.4f}", verdict)
        out.print(reg)
    for g in report.get("generations", []):
        gen = Table(title=f"prompt: {g['prompt']}", title_justify="left", show_header=False)
        gen.add_column(style="bold")
        gen.add_column()
        for name, reply in g.items():
            if name != "prompt":
                gen.add_row(_short(name), reply)
        out.print(gen)


def _short(name: str) -> str:
    try:
        return os.path.relpath(name)
    except ValueError:
        return name
