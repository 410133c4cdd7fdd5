"""The report's HTML: tables, the lineage strip, and the two pages (one output; several compared). Self-contained: no
script, nothing loaded from the network."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Iterable

from lorakit import __version__
from lorakit.console import format_value
from lorakit.outputs import ExportManifest, MergeManifest, TrainingRunManifest, now
from lorakit.outputs.layout import REPORT_FILE
from lorakit.report.plots import run_charts
from lorakit.report.view import (
    EVAL_METRICS,
    STAGE_LABEL,
    OutputView,
    headline,
    lineage_chains,
    memory_rows,
    run_totals,
    short,
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value as the terminal tables show it (lorakit.console.format_value), '-' for a missing one."""
    return "-" if value is None else format_value(value)


def key_value_table(title: str, rows: dict[str, Any], css: str = "") -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><th>{_e(k.replace('_', ' '))}</th><td>{_e(fmt(v))}</td></tr>" for k, v in rows.items())
    return f'<table class="kv {css}"><caption>{_e(title)}</caption>{body}</table>'


def grid_table(title: str, columns: list[str], rows: list[list[Any]], css: str = "",
               marks: list[str] | None = None) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(f'<tr class="{_e((marks or [""] * len(rows))[i])}">'
                   + "".join(f"<td>{_e(fmt(v))}</td>" for v in row) + "</tr>" for i, row in enumerate(rows))
    caption = f"<caption>{_e(title)}</caption>" if title else ""
    return f'<table class="grid {css}">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'



def eval_tables(output: OutputView) -> str:
    """The latest eval this folder took part in: every candidate's scores (this one and its parent marked) and this
    folder's verdicts against its parent."""
    report = output.eval
    if not report:
        return ('<p class="note">Not evaluated yet. <code>lorakit eval '
                f'{_e(output.path)} --tasks examples/data/mc-facts.jsonl</code> (or --data / --prefs / --tasks '
                'hellaswag) adds the scores here, each against its parent.</p>')
    candidates = report.get("candidates", [])
    mine = output.eval_entry()
    parent = mine.get("parent") if mine else None
    metrics = [m for m in EVAL_METRICS if any(m in c for c in candidates)]
    metrics += sorted({k for c in candidates for k in c if "/" in k})
    rows = [[short(c["name"]), c.get("kind"), *[c.get(m) for m in metrics]] for c in candidates]
    marks = ["this" if output.is_me(c.get("name")) else "parent" if c.get("name") == parent else ""
             for c in candidates]
    parts = [grid_table("eval: every candidate (this folder and its parent highlighted)", ["candidate", "kind", *metrics],
                        rows, "eval", marks)]
    verdicts = [r for r in report.get("regressions", []) if output.is_me(r.get("candidate"))]
    if verdicts:
        parts.append(grid_table("against its parent", ["metric", "parent", "this", "parent value", "change", "verdict"],
                                [[r["metric"], short(r["parent"]), r["value"], r["parent_value"], r["change"],
                                  "worse" if r["worse"] else "better or equal"] for r in verdicts], "verdicts",
                                ["worse" if r["worse"] else "ok" for r in verdicts]))
    settings = {k: report.get(k) for k in ("data", "prefs", "tolerance") if report.get(k) is not None}
    bench = report.get("benchmarks") or {}
    if bench:
        settings["tasks"] = ", ".join(t["name"] for t in bench.get("tasks", []))
        settings.update({k: bench.get(k) for k in ("limit", "num_fewshot", "chat_template", "lm_eval")
                         if bench.get(k) is not None})
    parts.append(key_value_table("eval settings", settings))
    return "".join(parts)


def lineage_html(chains: list[list[dict[str, Any]]]) -> str:
    rows = []
    for chain in chains:
        nodes = []
        for node in chain:
            label = STAGE_LABEL.get(node["stage"], node["stage"])
            numbers = "".join(f"<span>{_e(k)} {_e(fmt(v))}</span>" for k, v in list(node["metrics"].items())[:3])
            css = "node given" if node["given"] else "node"
            nodes.append(f'<div class="{css}" data-stage="{_e(label)}"><b>{_e(label)}</b>'
                         f'<code>{_e(short(node["path"]))}</code>{numbers}</div>')
        rows.append('<div class="chain">' + '<span class="arrow">&rarr;</span>'.join(nodes) + "</div>")
    return '<section><h2>lineage</h2>' + "".join(rows) + "</section>"


# ---------------------------------------------------------------------------------------------------------------
# Pages

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d2430;background:#fff;max-width:1180px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.sub{color:#5b6572;font-size:13px;margin:0 0 12px} code{font-size:12px;background:#f3f4f6;padding:1px 4px;border-radius:3px}
.plots{display:flex;flex-wrap:wrap;gap:10px} figure.plot{margin:0;border:1px solid #e3e6ea;border-radius:6px;padding:4px}
figure.plot svg{width:540px;height:auto;display:block}
table{border-collapse:collapse;font-size:13px;margin:8px 16px 8px 0;vertical-align:top}
caption{text-align:left;font-weight:600;padding:4px 0;color:#39424e}
th,td{border:1px solid #e3e6ea;padding:3px 8px;text-align:left} th{background:#f7f8fa;font-weight:600}
table.kv{display:inline-table} tr.this td{background:#eef6ff;font-weight:600} tr.parent td{background:#f6f6f6}
tr.worse td{background:#fdecec} .note{color:#5b6572;font-size:13px}
.chain{display:flex;align-items:stretch;gap:6px;margin:6px 0;flex-wrap:wrap}
.node{border:1px solid #c9ced6;border-radius:6px;padding:6px 10px;font-size:12px;display:flex;flex-direction:column;
min-width:120px;background:#fafbfc} .node.given{border-color:#3b82f6;background:#eef6ff}
.node b{font-size:13px} .node code{background:none;padding:0} .node span{color:#39424e}
.arrow{align-self:center;color:#8a94a3;font-size:18px}
footer{margin-top:28px;color:#8a94a3;font-size:12px}
"""


def page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    body = "".join(s for s in sections if s)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{_e(title)}</h1><p class="sub">{subtitle}</p>{body}'
            f"<footer>lorakit {_e(__version__)} &middot; {_e(now())} &middot; self-contained: no scripts, nothing "
            "loaded from the network</footer></body></html>\n")


def run_page(output: OutputView) -> str:
    m, s = output.manifest, output.summary
    training = m if isinstance(m, TrainingRunManifest) else None
    when = m.written_at if m is not None else None
    method = training.method if training else m.method if isinstance(m, MergeManifest) else None
    device = training.device if training else None
    subtitle = " &middot; ".join(_e(x) for x in (
        str(output.path), output.base_name and f"base {output.base_name}", method,
        device and f"{training.precision} on {device}", when and f"finished {when}") if x)
    numbers = {k: s.get(k) for k in ("steps", "first_loss", "final_loss", "first_eval_loss", "final_eval_loss",
                                     "eval_loss_min", "eval_loss_min_step", "kept_step",
                                     "final_reward_accuracies", "final_reward_margins",
                                     "final_eval_reward_accuracies", "train_seconds") if s.get(k) is not None}
    if training and training.kept is not None and training.kept.why:
        numbers["kept"] = training.kept.why
    dataset = training.dataset.model_dump() if training and training.dataset else {}
    data = {k: dataset.get(k) for k in ("source", "format", "rows", "eval_rows", "tokens", "trained_tokens")
            if dataset.get(k) is not None}
    if training and training.trainable_parameters:
        data["trainable parameters"] = f"{training.trainable_parameters:,} of {training.total_parameters or 0:,}"
    if isinstance(m, MergeManifest):
        numbers.update({f"merge {k}": v for k, v in (m.gap or {}).items() if isinstance(v, (int, float))})
    if isinstance(m, ExportManifest):
        figures = m.verification.model_dump(exclude_none=True) if m.verification is not None else {}
        numbers.update({f"export {k}": v for k, v in figures.items() if isinstance(v, (int, float))})
    charts = run_charts([output])
    sections = [
        lineage_html(lineage_chains([output])),
        "<section><h2>numbers</h2>" + key_value_table("summary", numbers) + key_value_table("data", data)
        + key_value_table("memory", memory_rows(output)) + key_value_table("speed", run_totals(output)) + "</section>",
        ('<section><h2>curves</h2><div class="plots">' + "".join(charts) + "</div></section>") if charts else "",
        "<section><h2>evaluation</h2>" + eval_tables(output) + "</section>",
    ]
    kind = "run" if isinstance(m, TrainingRunManifest) else "model" if output.stage == "merge" else ""
    title = " ".join(w for w in (STAGE_LABEL.get(output.stage, output.stage), kind) if w) + f": {output.path.name}"
    return page(title, subtitle, sections)


def comparison_page(outputs: list[OutputView], target: Path) -> str:
    # one column per output, one row per metric: stays readable however many metrics the stages bring
    numbers = [headline(output) for output in outputs]
    metrics: list[str] = []
    for row in numbers:
        metrics += [k for k in row if k not in metrics]
    links = []
    for output in outputs:
        report = output.path / REPORT_FILE
        if report.is_file():
            links.append(f'<li><a href="{_e(os.path.relpath(report, target.parent))}">{_e(output.label)}</a></li>')
    table = grid_table("", ["", *[f"{STAGE_LABEL.get(o.stage, o.stage)}: {short(str(o.path))}" for o in outputs]],
                       [[metric, *[row.get(metric) for row in numbers]] for metric in metrics], "headline")
    training = [o for o in outputs if o.metrics]
    charts = run_charts(training) if training else []
    sections = [
        lineage_html(lineage_chains(outputs)),
        "<section><h2>headline metrics</h2>" + table + "</section>",
        ('<section><h2>curves (overlaid)</h2><div class="plots">' + "".join(charts) + "</div></section>")
        if charts else "",
        ("<section><h2>each output's own report</h2><ul>" + "".join(links) + "</ul></section>") if links else "",
    ]
    return page(f"lorakit report: {len(outputs)} outputs", _e(", ".join(short(str(o.path)) for o in outputs)),
                sections)
