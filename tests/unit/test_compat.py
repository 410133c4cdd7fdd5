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


def test_the_offline_kernel_trust_note_is_dropped_and_the_kernels_packages_other_warnings_kept(caplog):
    import logging

    compat.quiet_bitsandbytes_cpu_kernel_advice()
    compat.quiet_bitsandbytes_cpu_kernel_advice()  # idempotent: one filter, however often the CLI starts
    hub = logging.getLogger(compat.KERNELS_HUB_LOGGER)
    assert sum(isinstance(f, compat._OfflineTrustNoteFilter) for f in hub.filters) == 1
    with caplog.at_level(logging.WARNING):
        hub.warning("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because "
                    "Hugging Face Hub is in offline mode.")
        hub.warning("Kernel repository 'someone/kernel' is not from a trusted publisher")
    assert [r.getMessage() for r in caplog.records if r.name == compat.KERNELS_HUB_LOGGER] == \
        ["Kernel repository 'someone/kernel' is not from a trusted publisher"]


def test_the_kernels_package_still_logs_its_offline_note_where_the_filter_looks():
    import inspect

    hf_hub = pytest.importorskip("kernels._internals.hf_hub", reason="the kernels package is not installed")

    assert hf_hub.logger.name == compat.KERNELS_HUB_LOGGER
    assert compat.KERNELS_OFFLINE_TRUST_NOTE in inspect.getsource(hf_hub._check_trust_remote_code)


def test_the_gguf_loading_bar_follows_transformers_progress_bar_switch():
    from transformers import modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging as transformers_logging

    compat.route_gguf_loading_bar()
    assert gguf_loading.tqdm is transformers_logging.tqdm
    was_enabled = transformers_logging.is_progress_bar_enabled()
    try:
        transformers_logging.disable_progress_bar()  # what the CLI's HF_HUB_DISABLE_PROGRESS_BARS=1 does
        bar = gguf_loading.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")
        assert isinstance(bar, transformers_logging.EmptyTqdm) and list(bar) == [0, 1, 2]
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
