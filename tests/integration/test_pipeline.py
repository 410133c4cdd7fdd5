"""lorakit run (sft -> dpo -> merge -> quantize, skipping and resuming) and lorakit eval on its outputs."""

import json

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.config import load_recipe
from lorakit.eval.run import run_eval
from lorakit.pipeline import Pipeline

from ..conftest import REPO
from .test_sft_training import CtrlCAt

pytestmark = pytest.mark.slow  # every test here runs a pipeline

RECIPE = REPO / "recipes" / "tiny-cpu-pipeline.yaml"
runner = CliRunner()


def pipeline_recipe(root, *overrides):
    return load_recipe("pipeline", RECIPE, [f"root={root}", "sft.train.max_steps=60", "dpo.train.max_steps=30",
                                            *overrides])


def statuses(result):
    return {o.stage: o.status for o in result.outcomes}


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("pipeline") / "tiny"
    old = os.getcwd()
    os.chdir(REPO)  # the recipe's data paths are relative to the repository
    try:
        result = Pipeline(pipeline_recipe(root)).run()
    finally:
        os.chdir(old)
    assert result.failure is None, result.failure
    assert statuses(result) == {"sft": "ran", "dpo": "ran", "merge": "ran", "quantize": "ran"}
    return root


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_pipeline_ends_with_a_verified_gguf_and_modelfile(pipeline_root):
    export = pipeline_root / "export"
    assert (export / "model-q8_0.gguf").is_file() and (export / "Modelfile").is_file()
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["source"] == str((pipeline_root / "merged").resolve())
    assert manifest["verification"]["tokenization"]["mismatches"] == 0
    dpo = json.loads((pipeline_root / "dpo" / "manifest.json").read_text())
    assert dpo["parent"]["path"] == str((pipeline_root / "sft").resolve())


def test_second_run_skips_everything_and_a_dpo_edit_reruns_only_downstream(pipeline_root, in_repo):
    before = {stage: (pipeline_root / folder / "manifest.json").stat().st_mtime_ns
              for stage, folder in [("sft", "sft"), ("dpo", "dpo"), ("merge", "merged"), ("quantize", "export")]}
    again = Pipeline(pipeline_recipe(pipeline_root)).run()
    assert set(statuses(again).values()) == {"skipped"}
    edited = Pipeline(pipeline_recipe(pipeline_root, "dpo.dpo.beta=0.2")).run()
    assert statuses(edited) == {"sft": "skipped", "dpo": "ran", "merge": "ran", "quantize": "ran"}
    assert (pipeline_root / "sft" / "manifest.json").stat().st_mtime_ns == before["sft"]
    assert (pipeline_root / "export" / "manifest.json").stat().st_mtime_ns != before["quantize"]


def test_a_stage_whose_output_files_are_gone_runs_again(pipeline_root, in_repo):
    Pipeline(pipeline_recipe(pipeline_root)).run()  # whatever earlier tests edited, the stages match this recipe
    export = pipeline_root / "export"
    gguf = next(export.glob("*.gguf"))
    gguf.unlink()
    again = Pipeline(pipeline_recipe(pipeline_root)).run()
    assert statuses(again) == {"sft": "skipped", "dpo": "skipped", "merge": "skipped", "quantize": "ran"}
    assert gguf.is_file()


def test_interrupted_stage_resumes(tmp_path, in_repo):
    root = tmp_path / "interrupted"
    first = Pipeline(pipeline_recipe(root), callbacks=(CtrlCAt(10),)).run()
    assert statuses(first)["sft"] == "failed" and "interrupted" in first.failure.message
    assert statuses(first)["dpo"] == "not run"
    second = Pipeline(pipeline_recipe(root)).run()
    assert second.failure is None
    assert statuses(second) == {"sft": "resumed", "dpo": "ran", "merge": "ran", "quantize": "ran"}
    metrics = [json.loads(line) for line in (root / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics) == 60


def test_eval_sft_lowers_loss_and_dpo_raises_reward_accuracy(pipeline_root, in_repo):
    sft, dpo = pipeline_root / "sft", pipeline_root / "dpo"
    report = run_eval([sft, dpo], data="examples/data/chat-messages.jsonl", prefs="examples/data/prefs.jsonl")
    by_kind = {c["kind"]: c for c in report["candidates"]}
    assert by_kind["sft"]["loss"] < by_kind["base"]["loss"]
    assert by_kind["dpo"]["reference"] == str(sft.resolve())
    assert by_kind["dpo"]["reward_accuracy"] >= 0.8 and by_kind["dpo"]["reward_margin"] > 0
    assert by_kind["dpo"]["logp_gap"] > by_kind["sft"]["logp_gap"]
    assert "reward_accuracy" not in by_kind["base"] and "logp_gap" in by_kind["base"]  # no reference to reward against
    saved = json.loads((dpo / "eval.json").read_text())
    assert saved["candidates"] == report["candidates"]


def test_eval_of_a_dpo_run_alone_scores_it_against_its_sft_parent(pipeline_root, in_repo):
    sft, dpo = pipeline_root / "sft", pipeline_root / "dpo"
    first = run_eval([sft, dpo], prefs="examples/data/prefs-test.jsonl", with_base=False)
    both = {c["kind"]: c for c in first["candidates"]}
    alone = {c["kind"]: c for c in run_eval([dpo], prefs="examples/data/prefs-test.jsonl",
                                            with_base=False)["candidates"]}
    assert json.loads((dpo / "eval.json").read_text())["previous"][0]["candidates"] == first["candidates"]
    assert alone["dpo"]["reference"] == str(sft.resolve())
    assert {k: alone["dpo"][k] for k in ("reward_accuracy", "reward_margin", "logp_gap")} == pytest.approx(
        {k: both["dpo"][k] for k in ("reward_accuracy", "reward_margin", "logp_gap")})


def test_eval_of_merged_and_gguf_shows_what_quantization_cost(pipeline_root, in_repo):
    merged, export = pipeline_root / "merged", pipeline_root / "export"
    report = run_eval([merged, export], data="examples/data/chat-messages.jsonl", with_base=False)
    loss = {c["kind"]: c["loss"] for c in report["candidates"]}
    assert loss["gguf"] == pytest.approx(loss["merged"], rel=0.05)
    assert [r["parent"] for r in report["regressions"]] == [str(merged.resolve())]
    assert not report["regressions"][0]["worse"]  # q8_0 moves the loss by far less than the 1 % tolerance


def test_fail_on_regression_gates_on_a_worse_stage(pipeline_root, in_repo, tmp_path):
    from lorakit.train.dpo import run_dpo

    from ..conftest import dpo_recipe

    sft = pipeline_root / "sft"
    prefs = ["--prefs", "examples/data/prefs.jsonl", "--no-base", "--fail-on-regression"]
    good = runner.invoke(app, ["eval", str(sft), str(pipeline_root / "dpo"), *prefs])
    assert good.exit_code == 0, good.output
    # a DPO run trained on swapped pairs prefers the wrong answers: worse than its SFT parent, so eval must gate
    swapped = run_dpo(dpo_recipe(tmp_path / "swapped", sft, "data.columns={chosen: rejected, rejected: chosen}",
                                 "data.eval=null", max_steps=30))
    bad = runner.invoke(app, ["eval", str(sft), str(swapped.path), *prefs])
    assert bad.exit_code != 0
    assert "regression" in bad.output and "logp_gap" in bad.output


def test_the_pipeline_writes_and_links_one_report(pipeline_root):
    from ..report_checks import read_page

    page = read_page((pipeline_root / "report.html").read_text())
    assert page.stages == [["base", "sft", "dpo", "merged", "export"]]
    assert {"loss", "DPO reward accuracy"} <= set(page.plots)
    dpo = json.loads((pipeline_root / "dpo" / "manifest.json").read_text())["summary"]
    assert f"{dpo['final_loss']:.4f}" in page.cells
    for stage in ("sft", "dpo"):
        assert (pipeline_root / stage / "report.html").is_file()
    result = runner.invoke(app, ["report", *sorted(str(p) for p in pipeline_root.iterdir())])
    assert result.exit_code == 0 and (pipeline_root / "report.html").as_uri() in result.output, result.output


def test_benchmarks_on_every_stage_with_a_local_task(pipeline_root, in_repo):
    pytest.importorskip("lm_eval", reason="pip install 'lorakit[eval]' runs the benchmark tests")
    stages = [pipeline_root / name for name in ("sft", "dpo", "merged", "export")]
    result = runner.invoke(app, ["eval", *map(str, stages), "--tasks", "examples/data/mc-facts.jsonl", "--no-base",
                                 "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    acc = {c["kind"]: c["mc_facts/acc"] for c in report["candidates"]}
    assert set(acc) == {"sft", "dpo", "merged", "gguf"}
    assert acc["gguf"] == pytest.approx(acc["merged"], abs=0.05)  # q8_0 keeps the answers (GGUF via transformers)
    assert acc["merged"] == pytest.approx(acc["dpo"], abs=0.05)  # the merge is the run, in bf16
    gguf_row = next(r for r in report["regressions"] if r["metric"] == "mc_facts/acc"
                    and r["parent"] == str((pipeline_root / "merged").resolve()))
    assert not gguf_row["worse"]
    assert (pipeline_root / "export" / "eval.json").is_file()


def test_the_report_renders_in_a_browser(pipeline_root, tmp_path):
    """Headless Chromium opens the pipeline's page and a run's page: plots drawn, numbers shown, no console errors.
    The screenshots stay in the test's tmp folder (printed), never in the repository."""
    from ..report_checks import read_page, render

    for name, page in (("pipeline", pipeline_root / "report.html"), ("dpo", pipeline_root / "dpo" / "report.html")):
        shot = tmp_path / f"{name}.png"
        rendered = render(page, shot)
        print(f"screenshot: {shot}")
        assert rendered.console == [], rendered.console
        facts = read_page(rendered.dom)
        assert facts.plots and all(paths > 0 for paths in facts.plots.values()), facts.plots
        assert not facts.external and facts.scripts == 0
        dpo = json.loads((pipeline_root / "dpo" / "manifest.json").read_text())["summary"]
        assert f"{dpo['final_loss']:.4f}" in facts.cells
        from PIL import Image

        with Image.open(shot) as image:
            assert image.size == (1240, 2400)
            colours = image.convert("L").getextrema()
            assert colours[1] - colours[0] > 100  # something was drawn, not a blank page
