"""What a report shows of one output: its typed manifest (lorakit.outputs), its metrics log and its latest eval, and
the numbers drawn from them (headline figures, speed, memory, the lineage base -> sft -> dpo -> merged -> export)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError, RunError
from lorakit.io import read_json
from lorakit.outputs import (
    Damaged,
    ExportManifest,
    MergeManifest,
    Output,
    TrainingRunManifest,
    open_output,
    read_metrics,
)
from lorakit.outputs.layout import EVAL_FILE, METRICS_FILE

MAX_POINTS = 2000  # per curve: a 100k-step run still draws a light SVG
STAGE_ORDER = {"base": 0, "sft": 1, "dpo": 2, "merge": 3, "quantize": 4}
STAGE_LABEL = {"base": "base", "sft": "sft", "dpo": "dpo", "merge": "merged", "quantize": "export"}
EVAL_METRICS = ("loss", "perplexity", "reward_accuracy", "reward_margin", "logp_gap")
EVAL_ROW_KEYS = {"candidates": ("name",), "regressions": ("metric", "candidate", "parent", "value", "parent_value",
                                                          "change", "worse")}


@dataclass
class OutputView:
    """One output folder as the report sees it: the output, its metrics log and its latest eval."""

    path: Path  # where it lives (for a run being finished: its final path, not the staging folder)
    output: Output
    metrics: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] | None = None

    @property
    def manifest(self):
        return self.output.manifest

    @property
    def stage(self) -> str:
        if self.manifest is not None:
            return self.manifest.stage
        return "?" if self.output.stage is None else str(self.output.stage)

    @property
    def label(self) -> str:
        return f"{STAGE_LABEL.get(self.stage, self.stage)} {self.path.name}"

    @property
    def summary(self) -> dict[str, Any]:
        manifest = self.manifest
        return dict(manifest.summary or {}) if isinstance(manifest, TrainingRunManifest) else {}

    @property
    def base_name(self) -> str | None:
        return self.output.base_name

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


def read_eval(folder: Path, owner: str) -> dict[str, Any] | None:
    """The folder's latest eval.json (None when it has none); one that is unreadable or of the wrong shape is
    `Damaged` (a page that silently said "not evaluated yet" would hide the damage)."""
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


def read_view(folder: Path, display: Path | None = None) -> OutputView:
    folder = Path(folder)
    if folder.is_file():  # a GGUF file given for its export folder
        folder = folder.parent
    output = open_output(folder)
    shown = Path(display or folder)
    owner = f"{'run' if output.is_training_run else 'output'} {shown}"
    return OutputView(shown, output, read_metrics(folder / METRICS_FILE), read_eval(folder, owner))


def thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = -(-len(points) // MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def throughput_series(view: OutputView) -> list[tuple[float, float]]:
    """Tokens per second between consecutive training logs (TRL logs the running token count as num_tokens)."""
    logs = [r for r in view.metrics if "num_tokens" in r and "time" in r and "loss" in r]
    points = []
    for before, after in zip(logs, logs[1:]):
        seconds = after["time"] - before["time"]
        if seconds > 0 and after["num_tokens"] > before["num_tokens"]:
            points.append((after["step"], (after["num_tokens"] - before["num_tokens"]) / seconds))
    return thin(points)


def run_totals(view: OutputView) -> dict[str, Any]:
    """Headline speed of a run: wall time, steps/s and tokens/s over the whole run."""
    final = next((r for r in reversed(view.metrics) if "train_runtime" in r), {})
    tokens = max((r["num_tokens"] for r in view.metrics if isinstance(r.get("num_tokens"), (int, float))), default=0)
    totals: dict[str, Any] = {}
    if final:
        totals["train runtime (s)"] = final["train_runtime"]
        totals["steps/s"] = final.get("train_steps_per_second")
        totals["samples/s"] = final.get("train_samples_per_second")
        if tokens and final["train_runtime"]:
            totals["tokens/s"] = tokens / final["train_runtime"]
    return {k: v for k, v in totals.items() if v is not None}


def memory_rows(view: OutputView) -> dict[str, Any]:
    """The preflight estimate beside the measured CUDA peaks (measured only on CUDA)."""
    manifest = view.manifest
    training = isinstance(manifest, TrainingRunManifest)
    estimate = (manifest.vram_estimate or {}) if training else {}
    rows: dict[str, Any] = {}
    if "estimate_total_gib" in estimate:
        rows["estimated peak (GiB)"] = estimate["estimate_total_gib"]
    if "estimate_allocated_gib" in estimate:
        rows["estimated allocated (GiB)"] = estimate["estimate_allocated_gib"]
    for key, label in (("cuda_max_allocated_gib", "measured max allocated (GiB)"),
                       ("cuda_max_reserved_gib", "measured max reserved (GiB)")):
        values = [r[key] for r in view.metrics if isinstance(r.get(key), (int, float))]
        if values:
            rows[label] = max(values)
    if rows and not any(k.startswith("measured") for k in rows):
        device = (manifest.device if training else None) or "?"
        rows["measured"] = f"not measured (a {device} run; peaks are measured on CUDA)"
    return rows


def short(path: str | None) -> str:
    if not path:
        return "-"
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def headline(view: OutputView) -> dict[str, Any]:
    """The few numbers that say how an output did, whatever its stage."""
    s, m = view.summary, view.manifest
    row: dict[str, Any] = {}
    if isinstance(m, TrainingRunManifest):
        row.update({"steps": s.get("steps"), "final loss": s.get("final_loss"),
                    "final eval loss": s.get("final_eval_loss"), "train s": s.get("train_seconds")})
        if m.stage == "dpo":
            row.update({"reward acc": s.get("final_reward_accuracies"),
                        "eval reward acc": s.get("final_eval_reward_accuracies"),
                        "reward margin": s.get("final_reward_margins")})
    elif isinstance(m, MergeManifest):
        gap = m.gap or {}
        row.update({"dtype": m.dtype, "KL vs run": gap.get("mean_kl"), "top-1": gap.get("top1_agreement")})
    elif isinstance(m, ExportManifest):
        verification = m.verification or {}
        size = sum(v for k, v in m.sizes.items() if k.endswith((".gguf", ".safetensors")))
        row.update({"type": f"{m.format} {m.type or ''}".strip(), "MB": round(size / 1e6, 2) if size else None,
                    "KL vs merged": verification.get("mean_kl"), "top-1": verification.get("top1_agreement")})
    entry = view.eval_entry() or {}
    for key, value in entry.items():
        if key in EVAL_METRICS or "/" in key:
            row[f"eval {key}"] = value
    return {k: v for k, v in row.items() if v is not None}


def lineage_chains(views: list[OutputView]) -> list[list[dict[str, Any]]]:
    """base -> sft -> dpo -> merged -> export for every output, following recorded parents (those not given are read
    from disk when they are there); chains contained in a longer one are dropped."""
    given = {str(v.path.resolve()): v for v in views}
    chains = []
    for view in views:
        lineage = view.output.lineage(strict=True)
        chain = []
        for index, output in enumerate(lineage.outputs):
            key = str((view.path if index == 0 else output.folder).resolve())
            shown = view if index == 0 else given.get(key) or read_view(output.folder)
            chain.append({"stage": shown.stage, "path": key, "given": key in given, "metrics": headline(shown)})
        last = lineage.outputs[-1]
        if lineage.missing:
            chain.append({"stage": "?", "path": lineage.missing, "given": False, "metrics": {}})
        elif last.parent is None and last.base_name:
            chain.append({"stage": "base", "path": last.base_name, "given": False, "metrics": {}})
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
