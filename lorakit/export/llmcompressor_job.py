"""GPTQ / AWQ calibration with llm-compressor, run as a script inside the environment lorakit manages for it.

    <llm-compressor env>/bin/python llmcompressor_job.py JOB.json

llm-compressor pins an older transformers than lorakit, so this file imports nothing from lorakit: the job file says
what to do (source folder, scheme, method, group size, modules to leave in 16 bits, calibration rows as token ids,
output folder) and the last line printed is a JSON result. lorakit (lorakit.export.compressed) checks the inputs
before, and verifies the written folder after, in its own environment.
"""

from __future__ import annotations

import json
import sys
import time


def scheme_for(job: dict):
    """The compressed-tensors preset (W4A16, W8A8) with the group size lorakit chose for this model's shapes."""
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme(job["scheme"], ["Linear"])
    if job.get("group_size") and scheme.weights.group_size:
        scheme.weights.group_size = job["group_size"]
    return scheme


def modifier_for(job: dict):
    scheme = {"group_0": scheme_for(job)}
    if job["method"] == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        return GPTQModifier(config_groups=scheme, ignore=job["ignore"])
    from llmcompressor.modifiers.awq import AWQModifier

    return AWQModifier(config_groups=scheme, ignore=job["ignore"])


def main(job_path: str) -> int:
    job = json.loads(open(job_path, encoding="utf-8").read())
    started = time.time()
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    rows = job["rows"]
    dataset = Dataset.from_list([{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in rows])
    dtype = getattr(torch, job["dtype"])
    model = AutoModelForCausalLM.from_pretrained(job["source"], dtype=dtype)
    oneshot(model=model, dataset=dataset, recipe=[modifier_for(job)], num_calibration_samples=len(rows),
            max_seq_length=max(len(ids) for ids in rows), shuffle_calibration_samples=False)
    model.save_pretrained(job["output"], save_compressed=True)
    print(json.dumps({"ok": True, "seconds": round(time.time() - started, 1), "rows": len(rows),
                      "device": str(next(model.parameters()).device)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
