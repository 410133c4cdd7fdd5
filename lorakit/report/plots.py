"""The report's plots: line charts drawn by matplotlib as inline SVG (imported here only, so `lorakit --help` stays
light)."""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

from lorakit.outputs.manifest import TrainingRunManifest
from lorakit.report.view import OutputView, short, throughput_series


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


def eval_markers(output: OutputView, prefix: str = "") -> list[Marker]:
    """From the manifest's `kept` entry (lorakit.train.keep): where held-out loss turned up, and the kept step."""
    manifest = output.manifest
    kept = manifest.kept if isinstance(manifest, TrainingRunManifest) else None
    if kept is None:
        return []
    markers = []
    turn = kept.eval_turn
    if turn is not None and turn.final_step != turn.min_step:
        markers.append(Marker(turn.min_step, f"{prefix}eval loss lowest, then rises"))
    if kept.policy == "best":
        markers.append(Marker(kept.step, f"{prefix}kept (best)"))
    return markers


def plot_svg(title: str, curves: list[Curve], ylabel: str = "", log_y: bool = False,
             markers: list[Marker] | tuple = ()) -> str:
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
          markers: list[Marker] | tuple = ()) -> str | None:
    curves = [c for c in curves if c.points]
    if not curves:
        return None
    marks = "".join(f' data-marker-{i}="{html.escape(m.label, quote=True)} at step {m.step:g}"'
                    for i, m in enumerate(markers))
    return (f'<figure class="plot" data-plot="{html.escape(title, quote=True)}"{marks}>'
            f'{plot_svg(title, curves, ylabel, log_y, markers)}</figure>')


def reward_keys(output: OutputView) -> list[str]:
    """GRPO's per-function reward means, in the order they were logged (rewards/<name>/mean)."""
    keys: list[str] = []
    for record in output.metrics:
        for key in record:
            if key.startswith("rewards/") and key.endswith("/mean") and key not in keys:
                keys.append(key)
    return keys


def clipped_tokens(output: OutputView) -> list[tuple[float, float]]:
    """The share of completions cut at max_completion_length, scaled to the length axis (1.0 = max length)."""
    longest = max((r.get("completions/max_length") or 0 for r in output.metrics), default=0)
    if not longest:
        return []
    return [(step, share * longest) for step, share in output.train_series("completions/clipped_ratio")]


def run_charts(outputs: list[OutputView]) -> list[str]:
    """The charts of one run, or of several overlaid (one line per run, named by its folder)."""
    several = len(outputs) > 1
    names = [o.path.name for o in outputs]
    labels = {id(o): (o.path.name if names.count(o.path.name) == 1 else short(str(o.path))) for o in outputs}

    def name(o: OutputView, what: str) -> str:
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
        ("GRPO reward (weighted sum)",
         [c for o in outputs for c in (Curve(name(o, "train"), o.train_series("reward")),
                                       Curve(name(o, "eval"), o.train_series("eval_reward"), True))],
         "reward", False),
        ("GRPO rewards per function",
         [Curve(name(o, key.split("/")[1]), o.train_series(key)) for o in outputs for key in reward_keys(o)],
         "mean reward", False),
        ("GRPO completion length",
         [c for o in outputs for c in (Curve(name(o, "mean"), o.train_series("completions/mean_length")),
                                       Curve(name(o, "clipped share x max"), clipped_tokens(o), True))],
         "tokens", False),
        ("GRPO KL to the reference", [Curve(name(o, ""), o.train_series("kl")) for o in outputs], "KL", False),
        ("throughput", [Curve(name(o, ""), throughput_series(o)) for o in outputs], "tokens/s", False),
    ]
    drawn = [chart(title, curves, ylabel, log_y, markers if title == "loss" else ())
             for title, curves, ylabel, log_y in specs]
    return [d for d in drawn if d]
