"""`lorakit eval` holds one model at a time: each candidate's model is gone before the next one loads."""

import gc
import weakref

from ..conftest import EXAMPLES


def test_each_candidates_model_is_freed_before_the_next_loads(sft_run, monkeypatch):
    from lorakit.eval import run as eval_run

    loaded = []
    real_load = eval_run.load_candidate

    def load_and_watch(candidate, location):
        gc.collect()
        alive = [name for name, ref in loaded if ref() is not None]
        assert not alive, f"still resident while loading {candidate.name}: {alive}"
        model, tokenizer = real_load(candidate, location)
        loaded.append((candidate.name, weakref.ref(model)))
        return model, tokenizer

    monkeypatch.setattr(eval_run, "load_candidate", load_and_watch)
    report = eval_run.run_eval([sft_run.path], data=str(EXAMPLES / "chat-messages-test.jsonl"))
    assert [c["kind"] for c in report["candidates"]] == ["base", "sft"] and len(loaded) == 2
