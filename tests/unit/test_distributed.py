"""Multi-process training without starting processes: the recipe section, the plan, the refusals (all made before
any weights load), the accelerate configs lorakit writes, and how a failed launch is explained."""

from __future__ import annotations

import json

import pytest
import yaml

from lorakit.config import load_recipe
from lorakit.errors import ConfigError
from lorakit.train.strategies import (
    Plan,
    accelerate_config,
    check_plan,
    launched_plan,
    plan_from_recipe,
    quant_storage_dtype,
)

from ..conftest import REPO
from ..helpers import assert_clean_error, invoke

TINY = REPO / "recipes" / "tiny-cpu-sft.yaml"


def recipe(*overrides: str, stage: str = "sft"):
    return load_recipe(stage, None, list(overrides))


def refusal(recipe_, plan, device="cuda", gpus=8, deepspeed=True) -> str:
    with pytest.raises(ConfigError) as info:
        check_plan(recipe_, plan, device, gpus, deepspeed)
    return info.value.message + " | " + (info.value.hint or "")


# ---------------------------------------------------------------------------------------------------------------
# The recipe section


def test_distributed_section_defaults_to_one_process():
    section = recipe().distributed
    assert (section.num_processes, section.strategy, section.accelerate_config) == (1, "ddp", None)
    assert not plan_from_recipe(recipe()).distributed


def test_distributed_section_is_validated_like_the_rest(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("distributed:\n  num_process: 2\n  strategy: fsdp2\n")
    with pytest.raises(ConfigError) as info:
        load_recipe("sft", path)
    message = info.value.message
    assert "distributed.num_process: unknown key; did you mean 'distributed.num_processes'?" in message
    assert "distributed.strategy" in message and "fsdp2" in message
    with pytest.raises(ConfigError, match="distributed.num_processes"):
        recipe("distributed.num_processes=0")


def test_flags_set_the_distributed_section():
    resolved = load_recipe("sft", TINY, [], {"num_processes": 4, "strategy": "zero2"})
    assert (resolved.distributed.num_processes, resolved.distributed.strategy) == (4, "zero2")
    assert plan_from_recipe(resolved) == Plan(4, "zero2")


def test_print_config_shows_the_distributed_section():
    result = invoke("sft", "--recipe", TINY, "--num-processes", "2", "--strategy", "fsdp", "--print-config")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["distributed"] == {"num_processes": 2, "strategy": "fsdp",
                                                            "accelerate_config": None}


def test_pipeline_flags_reach_both_training_stages():
    result = invoke("run", REPO / "recipes" / "tiny-cpu-pipeline.yaml", "--num-processes", "2", "--print-config")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["sft"]["distributed"]["num_processes"] == 2
    assert resolved["dpo"]["distributed"]["num_processes"] == 2


# ---------------------------------------------------------------------------------------------------------------
# A user's accelerate config


def write_config(tmp_path, **fields):
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "num_machines": 1, **fields}))
    return path


def test_accelerate_config_decides_the_strategy(tmp_path):
    zero3 = write_config(tmp_path, distributed_type="DEEPSPEED", num_processes=8, deepspeed_config={"zero_stage": 3})
    plan = plan_from_recipe(recipe(f"distributed.accelerate_config={zero3}"))
    assert (plan.num_processes, plan.strategy, plan.accelerate_config) == (8, "zero3", zero3)
    # --num-processes still wins over the file's count
    assert plan_from_recipe(recipe(f"distributed.accelerate_config={zero3}",
                                   "distributed.num_processes=2")).num_processes == 2
    fsdp = write_config(tmp_path, distributed_type="FSDP", num_processes=2, num_machines=2)
    plan = plan_from_recipe(recipe(f"distributed.accelerate_config={fsdp}"))
    assert (plan.strategy, plan.num_machines, plan.per_machine) == ("fsdp", 2, 1)


def test_accelerate_config_contradicting_strategy_is_refused(tmp_path):
    fsdp = write_config(tmp_path, distributed_type="FSDP", num_processes=2)
    with pytest.raises(ConfigError, match="accelerate config .* says FSDP"):
        plan_from_recipe(recipe(f"distributed.accelerate_config={fsdp}", "distributed.strategy=zero2"))


def test_bad_accelerate_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        plan_from_recipe(recipe(f"distributed.accelerate_config={tmp_path / 'missing.yaml'}"))
    not_accelerate = tmp_path / "other.yaml"
    not_accelerate.write_text("stage: sft\n")
    with pytest.raises(ConfigError, match="not an accelerate config"):
        plan_from_recipe(recipe(f"distributed.accelerate_config={not_accelerate}"))


def test_launched_processes_read_the_strategy_from_accelerates_environment(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert launched_plan(8) == Plan(8, "ddp", None, 2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert launched_plan(4).strategy == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert launched_plan(4).strategy == "zero3"


# ---------------------------------------------------------------------------------------------------------------
# Refusals, before any weights load


def test_ddp_runs_on_the_cpu_and_on_gpus():
    check_plan(recipe(), Plan(2, "ddp"), "cpu", 0, False)
    check_plan(recipe(), Plan(4, "ddp"), "cuda", 4, False)
    check_plan(recipe("method=qlora"), Plan(2, "ddp"), "cuda", 2, False)


def test_fsdp_and_deepspeed_need_gpus():
    assert "fsdp needs CUDA GPUs" in refusal(recipe(), Plan(2, "fsdp"), "cpu", 0)
    assert "silently be plain DDP" in refusal(recipe(), Plan(2, "fsdp"), "cpu", 0)
    for strategy in ("zero2", "zero3"):
        assert f"{strategy} needs CUDA GPUs" in refusal(recipe(), Plan(2, strategy), "cpu", 0)
        assert "pip install deepspeed" in refusal(recipe(), Plan(2, strategy), "cuda", 2, deepspeed=False)


def test_what_is_supported_on_gpus_passes():
    for overrides, strategy in ((("method=qlora",), "fsdp"), (("method=qlora",), "zero2"),
                                (("lora.use_dora=true",), "fsdp"), (("lora.use_rslora=true",), "zero3"),
                                (("method=qlora", "lora.use_dora=true"), "fsdp")):
        check_plan(recipe(*overrides), Plan(2, strategy), "cuda", 2, True)
    check_plan(recipe(stage="dpo"), Plan(2, "zero3"), "cuda", 2, True)
    check_plan(recipe("method=qlora", stage="dpo"), Plan(2, "fsdp"), "cuda", 2, True)


def test_impossible_combinations_are_refused_with_the_reason():
    assert "zero.Init" in refusal(recipe("method=qlora"), Plan(2, "zero3"))
    assert "use --strategy fsdp" in refusal(recipe("method=qlora"), Plan(2, "zero3"))
    assert "bitsandbytes optimizers" in refusal(recipe("method=qlora", "train.optim=paged_adamw_8bit"),
                                                Plan(2, "fsdp"))
    for strategy in ("fsdp", "zero3"):
        assert "plain head" in refusal(recipe("train.loss=plain"), Plan(2, strategy))
    assert "8 processes, but this machine has 2 CUDA GPUs" in refusal(recipe(), Plan(8, "ddp"), "cuda", 2)
    assert "shards nothing" in refusal(recipe("distributed.strategy=fsdp"), Plan(1, "fsdp"))


def test_every_problem_is_reported_at_once():
    text = refusal(recipe("method=qlora", "train.loss=plain"), Plan(4, "zero3"), "cuda", 2, deepspeed=False)
    for fragment in ("needs DeepSpeed", "zero.Init", "plain head", "4 processes"):
        assert fragment in text


@pytest.mark.parametrize("strategy", ["fsdp", "zero2", "zero3"])
def test_cli_refuses_sharded_strategies_on_the_cpu_before_anything_starts(tmp_path, strategy):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the strategies are not refused here")
    out = tmp_path / "run"
    result = invoke("sft", "--recipe", TINY, "-o", out, "--num-processes", "2", "--strategy", strategy)
    assert_clean_error(result, f"{strategy} needs CUDA GPUs", "--strategy ddp", code=2, leftover=out)


# ---------------------------------------------------------------------------------------------------------------
# The accelerate configs lorakit writes


@pytest.mark.parametrize("strategy,method,kind", [("ddp", "lora", "MULTI_GPU"), ("fsdp", "lora", "FSDP"),
                                                  ("fsdp", "qlora", "FSDP"), ("zero2", "lora", "DEEPSPEED"),
                                                  ("zero3", "lora", "DEEPSPEED")])
def test_written_configs_are_accelerates_own(tmp_path, strategy, method, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(Plan(2, strategy), method)))
    config = load_config_from_file(str(path))  # accelerate's own loader: unknown fields fail
    assert config.distributed_type.value == kind and config.num_processes == 2
    assert config.mixed_precision == "no"  # the recipe's precision decides, through the trainer
    if strategy == "fsdp":
        fsdp = config.fsdp_config
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        # QLoRA: the FSDP1 settings of PEFT's FSDP-QLoRA guide; LoRA: FSDP2
        assert fsdp["fsdp_version"] == (1 if method == "qlora" else 2)
        if method == "qlora":
            assert fsdp["fsdp_use_orig_params"] is False and fsdp["fsdp_cpu_ram_efficient_loading"] is True
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(strategy[-1])
        assert config.deepspeed_config["zero3_init_flag"] is False


def test_qlora_under_fsdp_stores_4bit_weights_in_the_compute_dtype():
    import torch

    from lorakit.model import quantization_config, torch_dtype

    assert quant_storage_dtype("bf16") == "bfloat16" and quant_storage_dtype("fp16") == "float32"
    storage = torch_dtype(quant_storage_dtype("bf16"))
    config = quantization_config("qlora", recipe().qlora, torch.bfloat16, storage)
    assert config.bnb_4bit_quant_storage == torch.bfloat16 and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("qlora", recipe().qlora, torch.bfloat16).bnb_4bit_quant_storage == torch.uint8


def test_auto_optimizer_is_a_torch_one_under_sharding():
    from lorakit.train.args import resolve_optim

    assert resolve_optim("auto", "qlora", "cuda") == "paged_adamw_8bit"
    for strategy in ("fsdp", "zero2", "zero3"):
        assert resolve_optim("auto", "qlora", "cuda", strategy) == "adamw_torch"


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and failures of several processes


def test_a_checkpoint_is_complete_only_with_every_process_rng_state(tmp_path):
    from lorakit.outputs import RunFolder
    from lorakit.outputs.integrity import mark_checkpoint_complete

    run = RunFolder(tmp_path / "run")
    for step, ranks in ((3, (0, 1)), (6, (0,))):  # at step 6 process 1 died while saving
        folder = run.checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
        mark_checkpoint_complete(folder, step)  # rank 0 finished its part of both
        for rank in ranks:
            (folder / f"rng_state_{rank}.pth").write_bytes(b"x")
    assert run.latest_checkpoint(2).name == "checkpoint-3"
    assert run.latest_checkpoint(1).name == "checkpoint-6"


def failure_folder(tmp_path, records, launcher_log=""):
    folder = tmp_path / "launch"
    (folder / "errors").mkdir(parents=True)
    for record in records:
        (folder / "errors" / f"rank-{record['rank']}.json").write_text(json.dumps(record))
    (folder / "launcher.log").write_text(launcher_log)
    return folder


REPORT = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
lorakit FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_11:34:38
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 13338)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 13338
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_11:34:38
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 13337)
  error_file: <N/A>
============================================================
"""


def test_a_refused_input_wins_over_the_crashes_it_caused(tmp_path):
    from lorakit.train.launch import explain_failure

    records = [{"rank": 1, "kind": "unexpected", "message": "unexpected RuntimeError: Connection closed by peer",
                "hint": None, "exit_code": 1, "time": 1.0},
               {"rank": 0, "kind": "error", "message": "data.jsonl line 2: malformed JSON", "hint": "fix it",
                "exit_code": 1, "time": 2.0}]
    error, keep = explain_failure(failure_folder(tmp_path, records), 1, recipe(f"output_dir={tmp_path}/o"),
                                  Plan(2, "ddp"), "lorakit sft --resume")
    assert (error.message, error.hint, keep) == ("data.jsonl line 2: malformed JSON", "fix it", False)


def test_a_killed_process_is_named_before_the_errors_of_the_others(tmp_path):
    from lorakit.train.launch import explain_failure

    records = [{"rank": 0, "kind": "unexpected", "message": "unexpected RuntimeError: Connection closed by peer",
                "hint": None, "exit_code": 1, "time": 1.0}]
    error, keep = explain_failure(failure_folder(tmp_path, records, "noise\n" + REPORT), 1,
                                  recipe(f"output_dir={tmp_path}/o"), Plan(2, "ddp"), "lorakit sft --resume")
    assert error.message == "training process 1 (of 2) was killed by SIGKILL; the others stopped" and keep
    assert str(tmp_path / "launch") in error.hint


def test_an_interrupt_is_reported_once_with_exit_130(tmp_path):
    from lorakit.errors import RunInterrupted
    from lorakit.train.launch import explain_failure

    records = [{"rank": r, "kind": "interrupted", "message": f"interrupted at step 7 (rank {r})", "hint": "resume",
                "exit_code": 130, "time": float(2 - r)} for r in (0, 1)]
    error, _ = explain_failure(failure_folder(tmp_path, records), 1, recipe(f"output_dir={tmp_path}/o"),
                               Plan(2, "ddp"), "x")
    assert isinstance(error, RunInterrupted) and error.exit_code == 130 and error.message.endswith("(rank 0)")


def test_resume_needs_the_same_number_of_processes(tmp_path):
    from lorakit.errors import RunError
    from lorakit.outputs import RunFolder, SFTManifest
    from lorakit.train.lifecycle import check_resumable

    resolved = recipe(f"output_dir={tmp_path / 'run'}")
    run = RunFolder(tmp_path / "run", mode="resume")
    run.staging.mkdir(parents=True)
    run.write_recipe(resolved)
    run.write_manifest(SFTManifest(distributed={"processes": 2, "strategy": "ddp", "global_batch_size": 16}))
    check_resumable(run, resolved, processes=2)
    with pytest.raises(RunError, match="trained with 2 process"):
        check_resumable(run, resolved, processes=1)


def test_the_recipe_strategies_are_the_planners():
    from typing import get_args

    from lorakit.config import Strategy
    from lorakit.train.strategies import STRATEGIES

    assert get_args(Strategy) == STRATEGIES


def test_the_preflight_estimates_per_gpu_as_launched():
    from lorakit.train.preflight import preflight

    one = preflight(recipe(), "cpu", plan=Plan(1, "ddp"))
    four = preflight(recipe(), "cpu", plan=Plan(4, "fsdp"))
    assert four.total_gib < one.total_gib  # FSDP shards the weights (the planner's arithmetic, issue 18)
