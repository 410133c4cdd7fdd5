"""Every private library detail lorakit relies on is still there in the installed versions (lorakit.compat)."""

import pytest

from lorakit import compat


def test_every_hook_checkable_without_a_model_holds():
    assert compat.check_hooks() == ["check_trainer_hooks", "fused_output_class", "preference_collator_class",
                                    "gguf_loadable_architectures", "gguf_dequantizable_types"]
    assert "llama" in compat.gguf_loadable_architectures() and "Q4_K" in compat.gguf_dequantizable_types()


def test_a_changed_trainer_method_fails_loudly_naming_the_hook():
    class Changed:
        pass

    from trl import DPOTrainer

    original = DPOTrainer._prepare_dataset
    try:
        DPOTrainer._prepare_dataset = lambda self, dataset: dataset  # the signature a future TRL might have
        with pytest.raises(compat.LibraryChanged, match=r"_prepare_dataset: trl .* no longer provides"):
            compat.check_trainer_hooks(Changed)
    finally:
        DPOTrainer._prepare_dataset = original


def test_a_reference_adapter_without_its_policy_twin_fails_loudly():
    import torch

    class RenamedAdapters:  # what a TRL that named its reference adapter differently would leave
        def named_parameters(self):
            return [("layer.lora_A.ref.weight", torch.nn.Parameter(torch.zeros(1))),
                    ("layer.lora_A.policy.weight", torch.nn.Parameter(torch.zeros(1)))]

    with pytest.raises(compat.LibraryChanged, match="'ref' adapter parameter"):
        compat.match_reference_adapter_dtype(RenamedAdapters())


def test_dataset_fingerprint_is_read_from_a_real_dataset():
    import datasets

    assert compat.dataset_fingerprint(datasets.Dataset.from_dict({"a": [1]}))


def test_elastic_failure_reports_are_read_from_torchs_own_format():
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {0: ProcessFailure(local_rank=0, pid=10, exitcode=1, error_file="/nonexistent"),
                1: ProcessFailure(local_rank=1, pid=11, exitcode=-9, error_file="/nonexistent")}
    log = "W... noise\nTraceback (most recent call last):\n" + \
        f"torch.distributed.elastic.multiprocessing.errors.ChildFailedError: {ChildFailedError('lorakit', failures)}"
    assert sorted(compat.elastic_failures(log)) == [(0, 1), (1, -9)]
    assert compat.elastic_failures("no report here") == []


def test_checkpoints_of_several_processes_hold_one_rng_state_each():
    import inspect

    from transformers import Trainer

    source = inspect.getsource(Trainer._save_rng_state)
    assert 'f"rng_state_{self.args.process_index}.pth"' in source  # what compat.checkpoint_rng_files names
    assert compat.checkpoint_rng_files(2) == ["rng_state_0.pth", "rng_state_1.pth"]
