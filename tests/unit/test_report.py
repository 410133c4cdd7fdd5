"""report.html from run folders' manifests and metrics logs (written here by hand; tests/integration has real runs)."""

import json

import pytest

from lorakit.report import plots as report_mod
from lorakit.report import write_comparison_report, write_run_report, write_run_report_safely

from ..helpers import assert_clean_error, invoke
from ..report_checks import read_page


def write_output(folder, manifest, metrics=(), eval_report=None):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if eval_report is not None:
        (folder / "eval.json").write_text(json.dumps(eval_report))
    return folder


def sft_metrics(steps=20):
    records = []
    for step in range(1, steps + 1):
        records.append({"step": step, "time": 1000.0 + step, "loss": 5.0 / step, "learning_rate": 1e-3 * step / steps,
                        "grad_norm": 2.0 - step / steps, "num_tokens": 250.0 * step})
        if step % 10 == 0:
            records.append({"step": step, "time": 1000.5 + step, "eval_loss": 3.0 / step})
    records.append({"step": steps, "time": 1030.0, "train_runtime": 25.0, "train_loss": 1.0,
                    "train_steps_per_second": 0.8, "train_samples_per_second": 6.4})
    return records


def dpo_metrics(steps=10):
    return [{"step": s, "time": 2000.0 + s, "loss": 0.69 - 0.03 * s, "learning_rate": 5e-4, "grad_norm": 1.0,
             "num_tokens": 300.0 * s, "rewards/chosen": 0.01 * s, "rewards/rejected": -0.05 * s,
             "rewards/accuracies": min(1.0, 0.1 * s), "rewards/margins": 0.06 * s} for s in range(1, steps + 1)]


@pytest.fixture()
def pipeline(tmp_path):
    root = tmp_path / "pipe"
    sft = write_output(root / "sft", {
        "stage": "sft", "status": "complete", "base_model": {"name": "builtin:tiny-llama"}, "method": "lora",
        "device": "cpu", "precision": "fp32", "parent": None, "finished_at": "2026-12-01T10:00:00+00:00",
        "dataset": {"source": "chats.jsonl", "format": "messages", "rows": 50},
        "vram_estimate": {"estimate_total_gib": 0.627, "estimate_allocated_gib": 0.116},
        "summary": {"steps": 20, "first_loss": 5.0, "final_loss": 0.25, "final_eval_loss": 0.15,
                    "train_seconds": 25.0}}, sft_metrics())
    dpo = write_output(root / "dpo", {
        "stage": "dpo", "status": "complete", "base_model": {"name": "builtin:tiny-llama"}, "method": "lora",
        "device": "cuda", "precision": "bf16", "parent": {"path": str(sft.resolve()), "stage": "sft"},
        "summary": {"steps": 10, "final_loss": 0.39, "final_reward_accuracies": 1.0}},
        [{**r, "cuda_max_allocated_gib": 1.5 + r["step"] / 100, "cuda_max_reserved_gib": 2.0} for r in dpo_metrics()],
        eval_report={"candidates": [
            {"name": str(sft.resolve()), "kind": "sft", "parent": "base", "mc/acc": 0.8409},
            {"name": str((root / "dpo").resolve()), "kind": "dpo", "parent": str(sft.resolve()), "mc/acc": 0.9773}],
            "regressions": [{"candidate": str((root / "dpo").resolve()), "parent": str(sft.resolve()),
                             "metric": "mc/acc", "value": 0.9773, "parent_value": 0.8409, "change": 0.1364,
                             "worse": False}], "tolerance": 0.01,
            "benchmarks": {"tasks": [{"name": "mc"}], "chat_template": "auto", "lm_eval": "0.4.13"}})
    merged = write_output(root / "merged", {"stage": "merge", "status": "complete", "source": str(dpo.resolve()),
                                            "dtype": "bfloat16", "gap": {"mean_kl": 2.9e-4, "top1_agreement": 1.0}})
    write_output(root / "export", {"stage": "quantize", "status": "complete", "source": str(merged.resolve()),
                                   "format": "gguf", "type": "q8_0", "sizes": {"model-q8_0.gguf": 975488},
                                   "verification": {"mean_kl": 4.7e-4, "top1_agreement": 0.995}})
    (root / "pipeline.json").write_text("{}")
    return root


def test_an_sft_run_report_draws_its_curves_and_numbers(pipeline):
    target = write_run_report(pipeline / "sft")
    page = read_page(target.read_text())
    assert set(page.plots) == {"loss", "learning rate", "grad norm", "throughput"}
    assert page.plots["loss"] >= 2 and all(paths > 0 for paths in page.plots.values())  # train and eval lines drawn
    assert {"0.2500", "0.1500", "0.6270", "25.0000"} <= page.cell_numbers()  # final loss, eval loss, estimate, runtime
    assert any("not measured" in cell for cell in page.cells)  # a CPU run has no measured peak
    assert page.stages == [["base", "sft"]]
    assert not page.external and page.scripts == 0
    assert "Not evaluated yet" in target.read_text()


def test_a_dpo_run_report_has_rewards_measured_peaks_and_its_eval_against_the_parent(pipeline):
    page = read_page(write_run_report(pipeline / "dpo").read_text())
    assert {"DPO rewards: chosen vs rejected", "DPO reward accuracy", "DPO reward margin"} <= set(page.plots)
    assert {"1.6000", "2.0000"} <= page.cell_numbers()  # measured CUDA peaks beside the estimate
    assert {"0.9773", "0.8409", "0.1364", "better or equal"} <= page.cell_numbers()
    assert page.stages == [["base", "sft", "dpo"]]


def test_the_comparison_page_overlays_runs_and_follows_the_lineage(pipeline):
    result = invoke("report", *sorted(pipeline.iterdir()))  # what `lorakit report out/pipe/*` passes
    assert result.exit_code == 0, result.output
    target = pipeline / "report.html"
    assert target.as_uri() in result.output and "skipped" not in result.output
    page = read_page(target.read_text())
    assert page.stages == [["base", "sft", "dpo", "merged", "export"]]  # one chain: the others are inside it
    assert page.plots["loss"] >= 2 and page.plots["DPO reward accuracy"] >= 1
    assert {"gguf q8_0", "0.9950", "0.9773"} <= page.cell_numbers()  # export type and top-1, dpo's eval
    assert {"2.900e-04", "4.700e-04", "0.9800"} <= page.cell_numbers()  # merge KL, export KL, export MB
    # the pipeline root works as well as its folders
    assert write_comparison_report([pipeline])[0] == target


def test_a_plotting_failure_is_a_warning_and_leaves_no_half_written_page(pipeline, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(report_mod, "plot_svg", broken)
    assert write_run_report_safely(pipeline / "sft") is None
    assert "report.html was not written" in capsys.readouterr().err
    assert not list((pipeline / "sft").glob("*report.html*"))


def test_report_of_nothing_lorakit_wrote(tmp_path):
    (tmp_path / "x").mkdir()
    assert_clean_error(invoke("report", tmp_path / "x", tmp_path / "missing"), "no output folders to report on",
                       "missing (not found)")
