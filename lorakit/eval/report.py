"""report.html: a run's curves and numbers as one self-contained page, and a page comparing several outputs.

Every training run gets `report.html`, written into the staging folder with the adapter so it lands atomically with
the run, and redrawn when `lorakit eval` adds results. `lorakit report A B C` writes one page comparing outputs
(curves overlaid, headline metrics, the lineage base -> sft -> dpo -> merged -> export); `lorakit run` writes one for
its pipeline. Plots are inline SVG drawn by matplotlib (imported here only, so `lorakit --help` stays light); the page
has no script and loads nothing from the network. Drawing a report never fails the command that asked for it: any
error becomes a warning (`write_run_report_safely`).
"""

from __future__ import annotations

import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lorakit.errors import LorakitError, RunError
from lorakit.runs import METRICS_FILE, read_metrics, write_text_atomic

REPORT_FILE = "report.html"
EVAL_FILE = "eval.json"
MAX_POINTS = 2000  # per curve: a 100k-step run still draws a light SVG
STAGE_ORDER = {"base": 0, "sft": 1, "dpo": 2, "merge": 3, "quantize": 4}
STAGE_LABEL = {"base": "base", "sft": "sft", "dpo": "dpo", "merge": "merged", "quantize": "export"}


# ---------------------------------------------------------------------------------------------------------------
# What a folder holds


@dataclass
class Output:
    """One output folder as the report sees it: manifest, metrics log and latest eval."""

    path: Path  # where it lives (for a run being finished: its final path, not the staging folder)
    manifest: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] | None = None

    @property
    def stage(self) -> str:
        return str(self.manifest.get("stage", "?"))

    @property
    def label(self) -> str:
        return f"{STAGE_LABEL.get(self.stage, self.stage)} {self.path.name}"

    @property
    def summary(self) -> dict[str, Any]:
        return self.manifest.get("summary") or {}

    @property
    def parent(self) -> str | None:
        """The folder this output was made from: a run's parent run, a merge's run, an export's merged model."""
        if self.stage in ("sft", "dpo"):
            return (self.manifest.get("parent") or {}).get("path")
        source = self.manifest.get("source")
        return str(source) if source else None

    @property
    def base_name(self) -> str | None:
        return (self.manifest.get("base_model") or {}).get("name")

    def train_series(self, key: str) -> list[tuple[float, float]]:
        """(step, value) of a logged value; train-time logs only (the end-of-training summary line is not a step)."""
        points = [(r["step"], r[key]) for r in self.metrics
                  if isinstance(r.get(key), (int, float)) and "train_runtime" not in r]
        return thin(points)

    def eval_entry(self) -> dict[str, Any] | None:
        """This folder's row in its latest eval.json."""
        if not self.eval:
            return None
        return next((c for c in self.eval.get("candidates", []) if self.is_me(c.get("name"))), None)

    def is_me(self, name: str | None) -> bool:
        """Whether an eval candidate is this folder (or, for an export, its GGUF file)."""
        if not name:
            return False
        me = self.path.resolve()
        return name == str(me) or (name.endswith(".gguf") and Path(name).parent == me)


# The manifest fields a page reads, by the type it reads them as: one edited or damaged by hand is named here
# ("run X is damaged: manifest.json: ..."), not met as an AttributeError while drawing.
MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("base_model", "parent", "summary", "vram_estimate", "dataset", "gap", "verification", "sizes"),
                    dict),
    **dict.fromkeys(("stage", "source", "device", "precision", "method", "format", "type", "dtype", "finished_at",
                     "created_at"), str),
    **dict.fromkeys(("trainable_parameters", "total_parameters"), int),
}
EVAL_ROW_KEYS = {"candidates": ("name",), "regressions": ("metric", "candidate", "parent", "value", "parent_value",
                                                          "change", "worse")}


def _owner(folder: Path, manifest: dict[str, Any]) -> str:
    return f"run {folder}" if manifest.get("stage") in ("sft", "dpo") else f"output {folder}"


def read_checked_manifest(folder: Path) -> dict[str, Any]:
    """The manifest ({} when there is none); present but unreadable or of the wrong shape is `Damaged`."""
    from lorakit.integrity import Damaged
    from lorakit.runs import MANIFEST_FILE
    from lorakit.safe_io import read_json

    file = folder / MANIFEST_FILE
    if not (file.exists() or file.is_symlink()):
        return {}
    try:
        manifest = read_json(file, RunError)
    except LorakitError as exc:
        raise Damaged(f"output {folder}", MANIFEST_FILE, getattr(exc, "what", exc.message)) from None
    for key, kind in MANIFEST_TYPES.items():
        value = manifest.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise Damaged(_owner(folder, manifest), MANIFEST_FILE, f"{key} is {type(value).__name__}, not "
                          f"{'an object' if kind is dict else 'a string' if kind is str else 'an integer'}")
    if not all(isinstance(v, (int, float)) for v in (manifest.get("sizes") or {}).values()):
        raise Damaged(_owner(folder, manifest), MANIFEST_FILE, "sizes holds a value that is not a number")
    for key, field_ in (("base_model", "name"), ("parent", "path")):
        value = (manifest.get(key) or {}).get(field_)
        if value is not None and not isinstance(value, str):
            raise Damaged(_owner(folder, manifest), MANIFEST_FILE, f"{key}.{field_} is not a string")
    return manifest


def read_eval(folder: Path, owner: str) -> dict[str, Any] | None:
    """The folder's latest eval.json (None when it has none); one that is unreadable or of the wrong shape is
    `Damaged` (a page that silently said "not evaluated yet" would hide the damage)."""
    from lorakit.integrity import Damaged
    from lorakit.safe_io import read_json

    file = folder / EVAL_FILE
    if not (file.exists() or file.is_symlink()):
        return None
    try:
        data = read_json(file, RunError)
    except LorakitError as exc:
        raise Damaged(owner, EVAL_FILE, getattr(exc, "what", exc.message),
                      hint=f"run lorakit eval again, or delete {file}") from None
    for key, needed in EVAL_ROW_KEYS.items():
        rows = data.get(key, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in needed)
                                                 and isinstance(r[needed[0]], str) for r in rows):
            raise Damaged(owner, EVAL_FILE, f"{key} is not a list of records with {', '.join(needed)}",
                          hint=f"run lorakit eval again, or delete {file}")
    return data


def read_output(folder: Path, display: Path | None = None) -> Output:
    folder = Path(folder)
    if folder.is_file():  # a GGUF file given for its export folder
        folder = folder.parent
    manifest = read_checked_manifest(folder)
    return Output(Path(display or folder), manifest, read_metrics(folder / METRICS_FILE),
                  read_eval(folder, _owner(Path(display or folder), manifest)))


def thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = -(-len(points) // MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def throughput_series(output: Output) -> list[tuple[float, float]]:
    """Tokens per second between consecutive training logs (TRL logs the running token count as num_tokens)."""
    logs = [r for r in output.metrics if "num_tokens" in r and "time" in r and "loss" in r]
    points = []
    for before, after in zip(logs, logs[1:]):
        seconds = after["time"] - before["time"]
        if seconds > 0 and after["num_tokens"] > before["num_tokens"]:
            points.append((after["step"], (after["num_tokens"] - before["num_tokens"]) / seconds))
    return thin(points)


def run_totals(output: Output) -> dict[str, Any]:
    """Headline speed of a run: wall time, steps/s and tokens/s over the whole run."""
    final = next((r for r in reversed(output.metrics) if "train_runtime" in r), {})
    tokens = max((r["num_tokens"] for r in output.metrics if isinstance(r.get("num_tokens"), (int, float))), default=0)
    totals: dict[str, Any] = {}
    if final:
        totals["train runtime (s)"] = final["train_runtime"]
        totals["steps/s"] = final.get("train_steps_per_second")
        totals["samples/s"] = final.get("train_samples_per_second")
        if tokens and final["train_runtime"]:
            totals["tokens/s"] = tokens / final["train_runtime"]
    return {k: v for k, v in totals.items() if v is not None}


def memory_rows(output: Output) -> dict[str, Any]:
    """The preflight estimate beside the measured CUDA peaks (measured only on CUDA)."""
    estimate = output.manifest.get("vram_estimate") or {}
    rows: dict[str, Any] = {}
    if "estimate_total_gib" in estimate:
        rows["estimated peak (GiB)"] = estimate["estimate_total_gib"]
    if "estimate_allocated_gib" in estimate:
        rows["estimated allocated (GiB)"] = estimate["estimate_allocated_gib"]
    for key, label in (("cuda_max_allocated_gib", "measured max allocated (GiB)"),
                       ("cuda_max_reserved_gib", "measured max reserved (GiB)")):
        values = [r[key] for r in output.metrics if isinstance(r.get(key), (int, float))]
        if values:
            rows[label] = max(values)
    if rows and not any(k.startswith("measured") for k in rows):
        rows["measured"] = f"not measured (a {output.manifest.get('device', '?')} run; peaks are measured on CUDA)"
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Plots


@dataclass
class Curve:
    label: str
    points: list[tuple[float, float]]
    dashed: bool = False


@dataclass
class Marker:
    """A vertical line at a step, labelled (where eval loss was lowest, the step a run kept)."""

    step: float
    label: str


def eval_markers(output: Output, prefix: str = "") -> list[Marker]:
    """From the manifest's `kept` entry (lorakit.train.keep): where held-out loss turned up, and the kept step."""
    kept = output.manifest.get("kept") or {}
    turn = kept.get("eval_turn") or {}
    markers = []
    if isinstance(turn.get("min_step"), (int, float)) and turn.get("final_step") != turn.get("min_step"):
        markers.append(Marker(turn["min_step"], f"{prefix}eval loss lowest, then rises"))
    if isinstance(kept.get("step"), (int, float)) and kept.get("policy") == "best":
        markers.append(Marker(kept["step"], f"{prefix}kept (best)"))
    return markers


def plot_svg(title: str, curves: list[Curve], ylabel: str = "", log_y: bool = False,
             markers: list[Marker] = ()) -> str:
    """One line chart as an inline <svg> element (text kept as text, so the page stays small and searchable)."""
    import matplotlib
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.4, 3.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for curve in curves:
        xs, ys = zip(*curve.points)
        axes.plot(xs, ys, label=curve.label, linestyle="--" if curve.dashed else "-",
                  marker="o" if len(xs) <= 12 else None, markersize=3, linewidth=1.4)
    for marker, style in zip(markers, (":", "-.", ":", "-.")):
        axes.axvline(marker.step, color="0.35", linestyle=style, linewidth=1.0, label=f"{marker.label} ({marker.step:g})")
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("step", fontsize=8)
    if ylabel:
        axes.set_ylabel(ylabel, fontsize=8)
    values = [y for c in curves for _, y in c.points]
    if log_y and min(values) > 0 and max(values) / min(values) > 20:  # a loss falling by orders of magnitude
        axes.set_yscale("log")
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    if len(curves) > 1 or curves[0].label or markers:
        axes.legend(fontsize=7)
    buffer = io.StringIO()
    # svg.hashsalt: the same data draws the same file (ids are otherwise random)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "lorakit"}):
        figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML declaration and doctype: it is inlined into HTML


def chart(title: str, curves: list[Curve], ylabel: str = "", log_y: bool = False,
          markers: list[Marker] = ()) -> str | None:
    curves = [c for c in curves if c.points]
    if not curves:
        return None
    marks = "".join(f' data-marker-{i}="{_e(m.label)} at step {m.step:g}"' for i, m in enumerate(markers))
    return (f'<figure class="plot" data-plot="{_e(title)}"{marks}>'
            f'{plot_svg(title, curves, ylabel, log_y, markers)}</figure>')


def run_charts(outputs: list[Output]) -> list[str]:
    """The charts of one run, or of several overlaid (one line per run, named by its folder)."""
    several = len(outputs) > 1
    names = [o.path.name for o in outputs]
    labels = {id(o): (o.path.name if names.count(o.path.name) == 1 else short(str(o.path))) for o in outputs}

    def name(o: Output, what: str) -> str:
        return f"{labels[id(o)]} {what}".strip() if several else what

    markers = [m for o in outputs for m in eval_markers(o, f"{labels[id(o)]}: " if several else "")]
    specs: list[tuple[str, list[Curve], str, bool]] = [
        ("loss", [c for o in outputs for c in (Curve(name(o, "train"), o.train_series("loss")),
                                               Curve(name(o, "eval"), o.train_series("eval_loss"), dashed=True))],
         "loss", True),
        ("learning rate", [Curve(name(o, ""), o.train_series("learning_rate")) for o in outputs], "lr", False),
        ("grad norm", [Curve(name(o, ""), o.train_series("grad_norm")) for o in outputs], "", False),
        ("DPO rewards: chosen vs rejected",
         [c for o in outputs for c in (Curve(name(o, "chosen"), o.train_series("rewards/chosen")),
                                       Curve(name(o, "rejected"), o.train_series("rewards/rejected")),
                                       Curve(name(o, "eval chosen"), o.train_series("eval_rewards/chosen"), True),
                                       Curve(name(o, "eval rejected"), o.train_series("eval_rewards/rejected"), True))],
         "reward", False),
        ("DPO reward accuracy",
         [c for o in outputs for c in (Curve(name(o, "train"), o.train_series("rewards/accuracies")),
                                       Curve(name(o, "eval"), o.train_series("eval_rewards/accuracies"), True))],
         "accuracy", False),
        ("DPO reward margin",
         [c for o in outputs for c in (Curve(name(o, "train"), o.train_series("rewards/margins")),
                                       Curve(name(o, "eval"), o.train_series("eval_rewards/margins"), True))],
         "margin", False),
        ("throughput", [Curve(name(o, ""), throughput_series(o)) for o in outputs], "tokens/s", False),
    ]
    drawn = [chart(title, curves, ylabel, log_y, markers if title == "loss" else ())
             for title, curves, ylabel, log_y in specs]
    return [d for d in drawn if d]


# ---------------------------------------------------------------------------------------------------------------
# Tables and lineage


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value as the terminal tables show it (lorakit.console.format_value), '-' for a missing one."""
    from lorakit.console import format_value

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



EVAL_METRICS = ("loss", "perplexity", "reward_accuracy", "reward_margin", "logp_gap")


def eval_tables(output: Output) -> str:
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


def short(path: str | None) -> str:
    if not path:
        return "-"
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def headline(output: Output) -> dict[str, Any]:
    """The few numbers that say how an output did, whatever its stage."""
    s, m = output.summary, output.manifest
    row: dict[str, Any] = {}
    if output.stage in ("sft", "dpo"):
        row.update({"steps": s.get("steps"), "final loss": s.get("final_loss"),
                    "final eval loss": s.get("final_eval_loss"), "train s": s.get("train_seconds")})
        if output.stage == "dpo":
            row.update({"reward acc": s.get("final_reward_accuracies"),
                        "eval reward acc": s.get("final_eval_reward_accuracies"),
                        "reward margin": s.get("final_reward_margins")})
    elif output.stage == "merge":
        gap = m.get("gap") or {}
        row.update({"dtype": m.get("dtype"), "KL vs run": gap.get("mean_kl"), "top-1": gap.get("top1_agreement")})
    elif output.stage == "quantize":
        verification = m.get("verification") or {}
        sizes = m.get("sizes") or {}
        size = sum(v for k, v in sizes.items() if k.endswith((".gguf", ".safetensors")))
        row.update({"type": f"{m.get('format')} {m.get('type') or ''}".strip(), "MB": round(size / 1e6, 2) if size
                    else None, "KL vs merged": verification.get("mean_kl"), "top-1": verification.get("top1_agreement")})
    entry = output.eval_entry() or {}
    for key, value in entry.items():
        if key in EVAL_METRICS or "/" in key:
            row[f"eval {key}"] = value
    return {k: v for k, v in row.items() if v is not None}


def lineage_chains(outputs: list[Output]) -> list[list[dict[str, Any]]]:
    """base -> sft -> dpo -> merged -> export for every output, following recorded parents (those not given are read
    from disk when they are there); chains contained in a longer one are dropped."""
    given = {str(o.path.resolve()): o for o in outputs}
    chains = []
    for output in outputs:
        chain, current, seen = [], output, set()
        while current is not None and str(current.path.resolve()) not in seen:
            key = str(current.path.resolve())
            seen.add(key)
            chain.append({"stage": current.stage, "path": key, "given": key in given, "metrics": headline(current)})
            parent = current.parent
            if not parent:
                base = current.base_name
                if base:
                    chain.append({"stage": "base", "path": base, "given": False, "metrics": {}})
                break
            parent_path = Path(parent)
            if not parent_path.exists() and (current.path.parent / parent_path.name).is_dir():
                parent_path = current.path.parent / parent_path.name  # moved together (a copied pipeline root)
            current = given.get(str(parent_path.resolve())) or (
                read_output(parent_path) if (parent_path / "manifest.json").is_file() else None)
            if current is None:
                chain.append({"stage": "?", "path": parent, "given": False, "metrics": {}})
        chains.append(list(reversed(chain)))
    keys = [[node["path"] for node in chain] for chain in chains]
    kept = [c for c, k in zip(chains, keys)
            if not any(other != k and other[:len(k)] == k for other in keys)]
    unique, seen_keys = [], set()
    for chain in kept:
        key = tuple(node["path"] for node in chain)
        if key not in seen_keys:
            seen_keys.add(key)
            unique.append(chain)
    return unique


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
.node b{font-size:13px} .node code{background:none;padding:0} .node span{color:#39424e} .arrow{align-self:center;color:#8a94a3;font-size:18px}
footer{margin-top:28px;color:#8a94a3;font-size:12px}
"""


def page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    from lorakit import __version__
    from lorakit.runs import now

    body = "".join(s for s in sections if s)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{_e(title)}</h1><p class="sub">{subtitle}</p>{body}'
            f"<footer>lorakit {_e(__version__)} &middot; {_e(now())} &middot; self-contained: no scripts, nothing "
            "loaded from the network</footer></body></html>\n")


def run_page(output: Output) -> str:
    m, s = output.manifest, output.summary
    when = m.get("finished_at") or m.get("created_at")
    subtitle = " &middot; ".join(_e(x) for x in (
        str(output.path), output.base_name and f"base {output.base_name}", m.get("method"),
        m.get("device") and f"{m.get('precision')} on {m['device']}", when and f"finished {when}") if x)
    numbers = {k: s.get(k) for k in ("steps", "first_loss", "final_loss", "first_eval_loss", "final_eval_loss",
                                     "eval_loss_min", "eval_loss_min_step", "kept_step",
                                     "final_reward_accuracies", "final_reward_margins",
                                     "final_eval_reward_accuracies", "train_seconds") if s.get(k) is not None}
    if (m.get("kept") or {}).get("why"):
        numbers["kept"] = m["kept"]["why"]
    dataset = m.get("dataset") or {}
    data = {k: dataset.get(k) for k in ("source", "format", "rows", "eval_rows", "tokens", "trained_tokens")
            if dataset.get(k) is not None}
    if m.get("trainable_parameters"):
        data["trainable parameters"] = f"{m['trainable_parameters']:,} of {m.get('total_parameters', 0):,}"
    if output.stage == "merge":
        numbers.update({f"merge {k}": v for k, v in (m.get("gap") or {}).items() if isinstance(v, (int, float))})
    if output.stage == "quantize":
        numbers.update({f"export {k}": v for k, v in (m.get("verification") or {}).items()
                        if isinstance(v, (int, float))})
    charts = run_charts([output])
    sections = [
        lineage_html(lineage_chains([output])),
        "<section><h2>numbers</h2>" + key_value_table("summary", numbers) + key_value_table("data", data)
        + key_value_table("memory", memory_rows(output)) + key_value_table("speed", run_totals(output)) + "</section>",
        ('<section><h2>curves</h2><div class="plots">' + "".join(charts) + "</div></section>") if charts else "",
        "<section><h2>evaluation</h2>" + eval_tables(output) + "</section>",
    ]
    kind = "run" if output.stage in ("sft", "dpo") else "model" if output.stage == "merge" else ""
    title = " ".join(w for w in (STAGE_LABEL.get(output.stage, output.stage), kind) if w) + f": {output.path.name}"
    return page(title, subtitle, sections)


def comparison_page(outputs: list[Output], target: Path) -> str:
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


# ---------------------------------------------------------------------------------------------------------------
# Writing


def write_run_report(folder: str | Path, display: str | Path | None = None) -> Path:
    """Write FOLDER/report.html (atomically); `display` is where the folder will live (a run still in staging)."""
    folder = Path(folder)
    html_text = run_page(read_output(folder, Path(display) if display else None))
    target = folder / REPORT_FILE
    write_text_atomic(target, html_text)
    return target


def write_run_report_safely(folder: str | Path, display: str | Path | None = None) -> Path | None:
    """write_run_report, with any failure (a plotting library problem, odd metrics) turned into a warning."""
    from lorakit.console import warn

    try:
        return write_run_report(folder, display)
    except Exception as exc:  # a report is a convenience: it must never fail the run or eval that asked for it
        warn(f"report.html was not written for {display or folder}: {type(exc).__name__}: {exc}")
        return None


def expand(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The output folders among `paths` (a pipeline root gives its stage folders); what was skipped and why."""
    from lorakit.pipeline import FOLDERS, STATE_FILE

    folders, skipped = [], []
    for path in paths:
        if path.is_dir() and (path / STATE_FILE).is_file() and not (path / "manifest.json").is_file():
            folders += [path / name for name in FOLDERS.values() if (path / name / "manifest.json").is_file()]
        elif (path.is_dir() and (path / "manifest.json").is_file()) or (path.suffix == ".gguf" and path.is_file()):
            folders.append(path.parent if path.is_file() else path)
        elif path.name in (STATE_FILE, REPORT_FILE):
            continue  # `lorakit report out/pipeline/*` also matches the pipeline's own files
        elif path.exists():
            skipped.append(f"{path} (not an output folder lorakit wrote)")
        else:
            skipped.append(f"{path} (not found)")
    unique = list({str(p.resolve()): p for p in folders}.values())
    return unique, skipped


def default_target(folders: list[Path]) -> Path:
    if len(folders) == 1:
        return folders[0] / REPORT_FILE
    common = Path(os.path.commonpath([str(p.resolve()) for p in folders]))
    return common / REPORT_FILE


def write_comparison_report(paths: list[Path], output: Path | None = None) -> tuple[Path, list[str]]:
    """One page over several outputs (or the run's own report for one); returns its path and what was skipped."""
    from lorakit.errors import RunError

    folders, skipped = expand([Path(p) for p in paths])
    if not folders:
        raise RunError("no output folders to report on" + (f": skipped {', '.join(skipped)}" if skipped else ""),
                       hint="pass run, merged or export folders written by lorakit (or a pipeline's root)")
    if len(folders) == 1 and output is None:
        return write_run_report(folders[0]), skipped
    outputs = sorted((read_output(f) for f in folders), key=lambda o: (STAGE_ORDER.get(o.stage, 9), str(o.path)))
    target = Path(output) if output else default_target(folders)
    if target.is_dir():
        target = target / REPORT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, comparison_page(outputs, target))
    return target, skipped


def write_pipeline_report(root: Path, folders: list[Path]) -> Path | None:
    """`lorakit run`'s closing page over the stages that exist; a failure is a warning."""
    from lorakit.console import warn

    present = [f for f in folders if (f / "manifest.json").is_file()]
    if not present:
        return None
    try:
        return write_comparison_report(present, root / REPORT_FILE)[0]
    except Exception as exc:  # the pipeline's outputs are what matter; its report is a convenience
        warn(f"{root / REPORT_FILE} was not written: {type(exc).__name__}: {exc}")
        return None


