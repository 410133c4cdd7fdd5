"""The manifest records issue 25 adds to a training run (what the data screen found, which chat template and why,
which step was kept): typed like the rest, written back unchanged, and a field of the wrong shape named."""

import json
import re

import pytest

from lorakit.outputs import Damaged, SFTManifest, open_output, read_manifest, write_manifest

from .test_manifests import OLD_SFT, write

QUALITY = {"dedup": "exact", "dedup_threshold": 0.6, "dedup_ngram": 2, "decontaminate": "report",
           "contamination_ngram": 13, "contamination_threshold": 0.5, "exact_duplicates": 2, "near_duplicates": 1,
           "eval_duplicates": 1, "same_answers": 0, "contaminated": 3, "dropped": 3,
           "dropped_rows": {"exact duplicate of row 1": [4, 9], "repeats eval row 2": [7]}, "near_rows_checked": 50,
           "benchmark_rows": 12, "against": ["bench.jsonl"], "seconds": 0.12}
TEMPLATE = {"name": "chatml+added", "source": "ChatML with added special tokens",
            "reason": "the tokenizer has no chat template and no family's turn tokens",
            "added_tokens": ["<|im_start|>", "<|im_end|>"]}
KEPT = {"policy": "best", "step": 20, "last_step": 32, "stopped_early": True, "metric": "eval_loss", "value": 2.4562,
        "why": "lowest eval_loss of 4 evaluation(s): 2.4562 at step 20",
        "eval_turn": {"metric": "eval_loss", "min_step": 20, "min": 2.4562, "final_step": 32, "final": 2.61,
                      "rise": 0.0626, "evaluations": 4}}
RUN = {**OLD_SFT, "dataset": {**OLD_SFT["dataset"], "quality": QUALITY}, "chat_template": TEMPLATE, "kept": KEPT}


def test_the_records_read_typed_and_write_back_unchanged(tmp_path):
    folder = write(tmp_path / "run", RUN)
    manifest = open_output(folder).manifest
    assert isinstance(manifest, SFTManifest)
    assert manifest.dataset.quality.dropped_rows == {"exact duplicate of row 1": [4, 9], "repeats eval row 2": [7]}
    assert manifest.chat_template.added_tokens == ["<|im_start|>", "<|im_end|>"]
    assert manifest.kept.step == 20 and manifest.kept.eval_turn.min_step == 20 and manifest.kept.stopped_early
    write_manifest(folder, manifest)
    assert json.loads((folder / "manifest.json").read_text()) == RUN
    assert read_manifest(folder) == manifest


def test_runs_before_the_records_open_without_them(tmp_path):
    manifest = open_output(write(tmp_path / "run", OLD_SFT)).manifest
    assert manifest.dataset.quality is None and manifest.chat_template is None and manifest.kept is None


@pytest.mark.parametrize("change, words", [
    ({"kept": {**KEPT, "step": "20"}}, "kept.step is not an integer (it is a string)"),
    ({"chat_template": {"source": "x"}}, "chat_template.name is missing"),
    ({"dataset": {**OLD_SFT["dataset"], "quality": {**QUALITY, "dropped_rows": [4]}}},
     "dataset.quality.dropped_rows is not an object (it is a list)"),
])
def test_a_record_of_the_wrong_shape_is_named(tmp_path, change, words):
    folder = write(tmp_path / "run", {**RUN, **change})
    (folder / "lorakit.yaml").write_text("stage: sft\n")
    with pytest.raises(Damaged, match=re.escape(f"run {folder} is damaged: manifest.json: {words}")):
        open_output(folder)
