"""Real GRPO runs on the bundled tiny model (TRL's GRPOTrainer, PEFT LoRA, no mocks): what a step changes, what a
constant reward does (nothing), that a reward moves the policy toward what it prefers, the run folder it writes,
resume after kill -9, and the clean errors of every bad reward before and during training.

Runs are kept tiny (4-8 completions of <= 8 tokens, a few steps) so the module stays within seconds per test on a
quiet 2-core CPU.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from lorakit.config import load_recipe
from lorakit.model import cpu_has_native_bf16
from lorakit.outputs import read_run
from lorakit.train.grpo import run_grpo

from ..conftest import EXAMPLES
from ..helpers import assert_clean_error, invoke

pytestmark = pytest.mark.slow

PROMPTS = EXAMPLES / "grpo-capitals.jsonl"
TINY = ["data.max_length=64", "grpo.max_completion_length=8", "grpo.num_generations=4", "train.micro_batch_size=8",
        "train.gradient_accumulation_steps=1", "train.gradient_checkpointing=false", "train.logging_steps=1",
        "grpo.samples_steps=1", "preflight=false", "lora.dropout=0.0"]


def write_reward(folder: Path, body: str) -> str:
    file = folder / "rewards.py"
    file.write_text(body)
    return f"{file}:score"


def grpo_recipe(out: Path, rewards, *overrides: str, model: str | None = None, from_run=None, steps: int = 3,
                data: Path = PROMPTS):
    flags = {"output_dir": str(out), "data": str(data), "max_steps": steps, "rewards": list(rewards)}
    if from_run is not None:
        flags["from_run"] = str(from_run)
    else:
        flags["model"] = model
    return load_recipe("grpo", None, [*TINY, *overrides], flags)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class CheckBaseAtEnd(TrainerCallback):
    """At the end of training, the in-memory base weights (swapped for merged ones during every generation) still
    equal the base model's file, bit for bit."""

    def __init__(self, base_dir: str):
        self.original = load_file(os.path.join(base_dir, "model.safetensors"))
        self.checked = False

    def on_train_end(self, args, state, control, model=None, **kwargs):
        from .test_sft_training import assert_base_unchanged

        assert_base_unchanged(model, self.original)
        self.checked = True


# ---------------------------------------------------------------------------------------------------------------
# What a step does


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_a_step_changes_every_adapter_tensor_and_no_base_tensor(sft_run, tmp_path, precision):
    """Continuing the SFT adapter, with a reward that differs within groups (reply length); `auto` is bf16 on a CPU
    with native bf16 (lorakit.model.cpu_has_native_bf16), fp32 on others."""
    reward = write_reward(tmp_path, "def score(completion_ids, **kwargs):\n"
                                    "    return [float(len(ids)) for ids in completion_ids]\n")
    base_dir = read_run(sft_run.path).base_model
    check = CheckBaseAtEnd(base_dir)
    result = run_grpo(grpo_recipe(tmp_path / "grpo", [reward], "train.learning_rate=1.0e-3",
                                  f"train.precision={precision}", from_run=sft_run.path, steps=2), callbacks=[check])
    assert check.checked
    parent = load_file(str(sft_run.path / "adapter_model.safetensors"))
    trained = load_file(str(result.path / "adapter_model.safetensors"))
    assert parent.keys() == trained.keys() and parent
    unchanged = [k for k in parent if torch.equal(parent[k], trained[k])]
    assert not unchanged, f"not trained: {unchanged[:3]}"
    run = read_run(result.path, expect_stage=("grpo",))
    assert run.parent_path == sft_run.path.resolve() and run.manifest["parent"]["stage"] == "sft"
    assert run.manifest["speed"]["generation"].startswith("transformers generate")
    assert run.manifest["speed"]["reference"].startswith("none (beta 0")
    expected = "fp32" if precision == "fp32" or not cpu_has_native_bf16() else "bf16"
    assert run.manifest["precision"] == expected


def test_constant_reward_gives_zero_advantages_and_zero_loss(tiny_llama, tmp_path):
    reward = write_reward(tmp_path, "def score(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    result = run_grpo(grpo_recipe(tmp_path / "grpo", [reward], model=str(tiny_llama), steps=2))
    train = [r for r in records(result.path) if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert r["reward_std"] == 0.0 and r["frac_reward_zero_std"] == 1.0
        assert r["loss"] == 0.0 and r["grad_norm"] == 0.0
    # no gradient, so AdamW never moved the fresh adapter: its B matrices are still zero
    adapter = load_file(str(result.path / "adapter_model.safetensors"))
    assert all(torch.count_nonzero(t) == 0 for k, t in adapter.items() if "lora_B" in k)


def peaked_model(tiny_llama, folder: Path, prompt: str):
    """The tiny model with its output layer scaled up until its first reply token is a real choice: the random
    model is close to uniform over its 623 tokens (p ~0.3%, too rare for a group to ever sample twice), so the most
    likely first token is brought to 5-50%. Returns (model folder, that token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.chat_template import render, resolve_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    resolve_chat_template(tokenizer, None)
    ids = tokenizer(render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True),
                    return_tensors="pt", add_special_tokens=False)
    for scale in (4.0, 8.0, 16.0, 32.0, 64.0):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(scale)
            probs = model(**ids).logits[0, -1].softmax(-1)
        token, p = int(probs.argmax()), float(probs.max())
        if 0.05 <= p <= 0.5:
            model.save_pretrained(folder)
            AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(folder)
            return folder, token
    raise AssertionError("no scale gives the tiny model a first token of 5-50%")


def first_token_probs(model, tokenizer, prompts: list[str], token: int) -> float:
    from lorakit.chat_template import render

    total = 0.0
    with torch.no_grad():
        for prompt in prompts:
            text = render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            total += model(**ids).logits[0, -1].softmax(-1)[token].item()
    return total / len(prompts)


def test_a_reward_that_prefers_one_token_raises_its_probability(tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.chat_template import resolve_chat_template

    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    folder, token = peaked_model(tiny_llama, tmp_path / "model", prompts[0])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    resolve_chat_template(tokenizer, None)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    before = first_token_probs(base, tokenizer, prompts, token)
    reward = write_reward(tmp_path, f"def score(completion_ids, **kwargs):\n"
                                    f"    return [float(ids[:1] == [{token}]) for ids in completion_ids]\n")
    result = run_grpo(grpo_recipe(tmp_path / "grpo", [reward], "grpo.num_generations=8", "train.micro_batch_size=16",
                                  "train.learning_rate=5.0e-3", model=str(folder), steps=5))
    trained = PeftModel.from_pretrained(base, str(result.path)).eval()
    after = first_token_probs(trained, tokenizer, prompts, token)
    assert after > min(2 * before, before + 0.3), (before, after)
    rewards = [r["reward"] for r in records(result.path) if "reward" in r]
    assert rewards[-1] > rewards[0], rewards


def test_qlora_policy_trains_on_a_4bit_base(tiny_llama, tmp_path):
    """NF4 base (bitsandbytes on the CPU), LoRA adapter: the prompts' groups still share one prefill, the weights are
    not merged (a 4-bit base cannot take them), and the adapter trains."""
    # a reward that differs within every group (the completion's place in it): the advantages are never all zero
    reward = write_reward(tmp_path, "def score(completions, **kwargs):\n"
                                    "    return [float(i % 4) for i in range(len(completions))]\n")
    result = run_grpo(grpo_recipe(tmp_path / "grpo", [reward], "method=qlora", "train.learning_rate=1.0e-3",
                                  model=str(tiny_llama), steps=2))
    run = read_run(result.path)
    assert run.method == "qlora"
    assert run.manifest["speed"]["generation"] == "transformers generate (one prefill per group)"
    adapter = load_file(str(result.path / "adapter_model.safetensors"))
    assert any(torch.count_nonzero(t) for k, t in adapter.items() if "lora_B" in k)


# ---------------------------------------------------------------------------------------------------------------
# The run folder


def test_run_folder_samples_and_manifest(tiny_llama, tmp_path):
    reward = write_reward(tmp_path, "def score(completions, answer, **kwargs):\n"
                                    "    return [float(len(c[0]['content'])) for c in completions]\n")
    result = run_grpo(grpo_recipe(tmp_path / "grpo", ["exact_answer", reward, {"name": "length", "weight": 0.5}],
                                  model=str(tiny_llama), steps=2))
    first = records(result.path)[0]
    for key in ("reward", "reward_std", "rewards/exact_answer/mean", "rewards/exact_answer/std", "rewards/score/mean",
                "rewards/length/mean", "completions/mean_length", "completions/clipped_ratio", "entropy",
                "clip_ratio/region_mean"):
        assert key in first, key
    assert "kl" not in first  # beta 0: no reference, no KL
    samples = [json.loads(line) for line in (result.path / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2} and len(samples) == 16
    sample = samples[0]
    assert set(sample["rewards"]) == {"exact_answer", "score", "length"}
    assert sample["reward"] == pytest.approx(sample["rewards"]["exact_answer"] + sample["rewards"]["score"]
                                             + 0.5 * sample["rewards"]["length"])
    assert sample["prompt"].startswith("What is the capital of") and sample["answer"].startswith("The capital")
    assert sample["row"] in range(1, 17)
    assert sample["rewards"]["score"] == len(sample["completion"])
    manifest = read_run(result.path).manifest
    assert manifest["stage"] == "grpo" and manifest["dataset"]["columns"] == ["answer"]
    assert manifest["summary"]["prompts"] == 16 and "final_reward" in manifest["summary"]
    assert (result.path / "report.html").is_file()


def test_beta_logs_kl_against_the_parent(tmp_path, monkeypatch):
    from lorakit.train.sft import run_sft

    from ..conftest import REPO, sft_recipe

    monkeypatch.chdir(REPO)  # the SFT recipe's data paths are relative to the repository
    parent = run_sft(sft_recipe(tmp_path / "sft", max_steps=5)).path  # a short parent of its own: any adapter will do
    # a reward that differs within every group, so step 1 moves the policy away from the reference
    reward = write_reward(tmp_path, "def score(completions, **kwargs):\n"
                                    "    return [float(i % 4) for i in range(len(completions))]\n")
    result = run_grpo(grpo_recipe(tmp_path / "grpo", [reward], "grpo.beta=0.1", "train.learning_rate=1.0e-3",
                                  from_run=parent, steps=2))
    kl = [r["kl"] for r in records(result.path) if "kl" in r]
    assert len(kl) == 2 and kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 0  # policy == reference at first
    assert "SFT model" in read_run(result.path).manifest["speed"]["reference"]


# ---------------------------------------------------------------------------------------------------------------
# Resume


def test_killed_between_steps_resumes_the_same_curve(tiny_llama, tmp_path):
    from .test_kill9 import lorakit_killed

    # reply-dependent and never flat within a group: every step updates the adapter
    reward = write_reward(tmp_path, "def score(completion_ids, **kwargs):\n"
                                    "    return [len(set(ids)) + i % 2 for i, ids in enumerate(completion_ids)]\n")
    argv = ["grpo", "--model", str(tiny_llama), "--data", str(PROMPTS), "--reward", reward, "--max-steps", "4",
            "--set", "train.save_steps=2", "--set", "train.learning_rate=1.0e-3"]
    for assignment in TINY:
        argv += ["--set", assignment]
    straight = invoke(*argv, "-o", tmp_path / "straight")
    assert straight.exit_code == 0, straight.output
    code, output = lorakit_killed(tmp_path, [*argv, "-o", "grpo"], {"at": "step", "step": 3})
    assert code == -signal.SIGKILL, output
    assert (tmp_path / ".grpo.partial" / "checkpoints" / "checkpoint-2").is_dir()
    resumed = invoke(*argv, "-o", tmp_path / "grpo", "--resume")
    assert resumed.exit_code == 0, resumed.output
    keys = ("loss", "reward", "reward_std", "completions/mean_length", "grad_norm")
    expected = {r["step"]: r for r in records(tmp_path / "straight") if "loss" in r}
    got = {r["step"]: r for r in records(tmp_path / "grpo") if "loss" in r}
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    assert all(expected[step]["grad_norm"] > 0 for step in expected)
    for step in expected:
        for key in keys:
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
    steps = [json.loads(line)["step"] for line in (tmp_path / "grpo" / "samples.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and set(steps) == {1, 2, 3, 4}  # the killed step's samples were not kept twice


# ---------------------------------------------------------------------------------------------------------------
# Bad rewards: one clean error, before any weights load (or, for a function that fails only on real replies, at
# the step it fails on), naming file, function and row


BAD_REWARDS = {
    "a syntax error": ("def score(completions, **kwargs)\n    return [1.0]\n", "rewards.py line 1"),
    "no such function": ("def other(completions, **kwargs):\n    return [1.0]\n", "has no function 'score'"),
    "raises": ("def score(completions, **kwargs):\n    raise RuntimeError('no scorer')\n",
               "raised RuntimeError: no scorer on row 1"),
    "the wrong count": ("def score(completions, **kwargs):\n    return [1.0]\n", "returned 1 value(s) for 2 completions"),
    "None": ("def score(completions, **kwargs):\n    return [None] * len(completions)\n", "returned None for row 1"),
    "NaN": ("def score(completions, **kwargs):\n    return [float('nan')] * len(completions)\n",
            "returned nan for row 1"),
    "a string": ("def score(completions, **kwargs):\n    return ['1'] * len(completions)\n",
                 "returned a string ('1') for row 1"),
    "a missing column": ("def score(completions, tests, **kwargs):\n    return [0.0] * len(completions)\n",
                         "reads column(s) tests"),
}


@pytest.mark.parametrize("case", sorted(BAD_REWARDS))
def test_bad_reward_file_is_one_clean_error(tiny_llama, tmp_path, case):
    body, fragment = BAD_REWARDS[case]
    reward = write_reward(tmp_path, body)
    result = invoke("grpo", "--model", tiny_llama, "--data", PROMPTS, "--reward", reward, "-o", tmp_path / "out",
                    "--max-steps", "1", *[part for a in TINY for part in ("--set", a)])
    assert_clean_error(result, fragment, leftover=tmp_path / "out")
    assert "rewards.py" in result.output and "score" in result.output


def test_reward_failing_on_a_real_reply_names_the_row(tiny_llama, tmp_path):
    reward = write_reward(tmp_path, "def score(completions, **kwargs):\n"
                                    "    return [float(c[0]['content'].index('~')) if c[0]['content'] else 0.0\n"
                                    "            for c in completions]\n")
    result = invoke("grpo", "--model", tiny_llama, "--data", PROMPTS, "--reward", reward, "-o", tmp_path / "out",
                    "--max-steps", "1", *[part for a in TINY for part in ("--set", a)])
    assert_clean_error(result, "raised ValueError: substring not found on row")
    assert not (tmp_path / "out").exists()


def test_data_problems_are_found_before_weights_load(tiny_llama, tmp_path):
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "What is 2 + 2?", "answer": "4"}, {"prompt": "  ", "answer": "1"},
            {"prompt": "x" * 400, "answer": "2"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["grpo", "--model", tiny_llama, "--data", data, "-o", tmp_path / "out", "--max-steps", "1",
              *[part for a in TINY for part in ("--set", a)]]
    assert_clean_error(invoke(*common, "--reward", "exact_answer"), "row 2: 'prompt' is empty")
    data.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[2]) + "\n")
    assert_clean_error(invoke(*common, "--reward", "exact_answer"), "leave no room for grpo.max_completion_length=8",
                       "rows 2")
    data.write_text(json.dumps({"prompt": "What is 2 + 2?", "solution": "4"}) + "\n")
    assert_clean_error(invoke(*common, "--reward", "exact_answer"), "reads column(s) answer")
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}], "answer": "x"}) + "\n")
    assert_clean_error(invoke(*common, "--reward", "exact_answer"), "a prompt ends with the user's turn")


# ---------------------------------------------------------------------------------------------------------------
# Two processes


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_two_processes_share_each_group_and_its_advantages(tiny_llama, tmp_path):
    """DDP on gloo: 1 prompt x 8 completions per step, 4 on each process. A reward that is each process's rank makes
    every group half 0, half 1: only if the rewards are gathered before the group statistics (as TRL does) is the
    mean 0.5 with a non-zero std. Equality with one process cannot be asked of GRPO as of SFT/DPO: TRL seeds each
    process's sampling with seed + rank, so the completions themselves differ."""
    from .test_distributed import finish, launch

    reward = write_reward(tmp_path, "import os\n"
                                    "def score(completions, **kwargs):\n"
                                    "    return [float(os.environ.get('RANK', '0'))] * len(completions)\n")
    argv = ["grpo", "--model", str(tiny_llama), "--data", str(PROMPTS), "--reward", reward, "--max-steps", "2",
            "-o", str(tmp_path / "grpo"), "--num-processes", "2"]
    for assignment in [*TINY, "grpo.num_generations=8", "train.micro_batch_size=4"]:
        argv += ["--set", assignment]
    code, stdout, stderr = finish(launch(argv, tmp_path))
    assert code == 0, stderr
    assert "Batch: 8 completions per optimizer step = micro-batch 4 x accumulation 1 x 2 processes" in stderr
    train = [r for r in records(tmp_path / "grpo") if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert r["reward"] == pytest.approx(0.5) and r["reward_std"] > 0.5 and r["frac_reward_zero_std"] == 0.0
    assert stdout.count("GRPO run") == 1
    assert read_run(tmp_path / "grpo").manifest["distributed"]["processes"] == 2


# ---------------------------------------------------------------------------------------------------------------
# What a run checks and shows before training, and which step it keeps

def test_prompts_are_screened_and_the_first_prompt_is_shown_and_saved(tiny_llama, tmp_path, capsys):
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()]
    held_out = json.loads((EXAMPLES / "grpo-capitals-test.jsonl").read_text().splitlines()[0])
    # row 1 repeated as row 17; row 18 is a held-out prompt: the screen drops both (data.dedup: exact)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*rows, dict(rows[0]), held_out]))
    result = run_grpo(grpo_recipe(tmp_path / "grpo", ["exact_answer"],
                                  f"data.eval={EXAMPLES / 'grpo-capitals-test.jsonl'}", "data.dedup=exact",
                                  model=str(tiny_llama), steps=1, data=data))
    quality = read_run(result.path).manifest["dataset"]["quality"]
    assert quality["exact_duplicates"] == 1 and quality["eval_duplicates"] == 1
    assert sorted(row for rows in quality["dropped_rows"].values() for row in rows) == [17, 18]
    assert result.summary["prompts"] == 16
    example = json.loads((result.path / "example.json").read_text())
    prompt = example["sequences"][0]
    assert example["row"] == 1 and prompt["name"] == "prompt" and not any(prompt["trained_mask"])
    assert "What is the capital of France?" in "".join(prompt["tokens"])
    assert "First training example" in capsys.readouterr().err


def test_keep_best_keeps_the_step_with_the_highest_eval_reward(tiny_llama, tmp_path):
    # a reward that varies from step to step (the completions' lengths), evaluated on held-out prompts every step
    reward = write_reward(tmp_path, "def score(completions, **kwargs):\n"
                                    "    return [float(len(c[0]['content'])) for c in completions]\n")
    result = run_grpo(grpo_recipe(tmp_path / "grpo", [reward], f"data.eval={EXAMPLES / 'grpo-capitals-test.jsonl'}",
                                  "train.keep=best", "train.eval_steps=1", model=str(tiny_llama), steps=4))
    rewards = {r["step"]: r["eval_reward"] for r in records(result.path) if "eval_reward" in r}
    assert sorted(rewards) == [1, 2, 3, 4] and len(set(rewards.values())) > 1
    best = max(sorted(rewards), key=rewards.get)  # the first step with the highest reward, as transformers keeps
    kept = read_run(result.path).manifest["kept"]
    assert kept["policy"] == "best" and kept["metric"] == "eval_reward" and kept["step"] == best
    assert kept["value"] == pytest.approx(rewards[best]) and "highest eval_reward" in kept["why"]
    # GRPO's loss is no fit: no "eval loss turned up" record or warning
    assert kept["eval_turn"] is None and "eval_loss_min" not in result.summary
    from .test_keep_best import same_adapter

    assert same_adapter(result.path, result.path / "checkpoints" / f"checkpoint-{best}")
