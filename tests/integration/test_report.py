"""report.html and real training runs: it lands with the run, and drawing it can never break one."""

import json

import pytest

from lorakit.report import plots as report_mod
from lorakit.train.sft import run_sft

from ..conftest import REPO, sft_recipe
from ..report_checks import read_page

pytestmark = pytest.mark.slow


def test_the_finished_run_carries_its_report(sft_run):
    page = read_page((sft_run.path / "report.html").read_text())
    summary = json.loads((sft_run.path / "manifest.json").read_text())["summary"]
    assert f"{summary['final_loss']:.4f}" in page.cells and f"{summary['final_eval_loss']:.4f}" in page.cells
    assert page.plots["loss"] >= 2 and page.plots["learning rate"] >= 1
    assert not page.external and page.scripts == 0


def test_a_plotting_failure_is_a_warning_and_the_run_completes(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("the plotting library broke")

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(report_mod, "plot_svg", broken)
    result = run_sft(sft_recipe(tmp_path / "run", max_steps=2))
    assert json.loads((result.path / "manifest.json").read_text())["status"] == "complete"
    assert (result.path / "adapter_model.safetensors").is_file()
    assert not list(result.path.glob("*report.html*"))  # no page, and no half-written one
    assert "report.html was not written" in capsys.readouterr().err
