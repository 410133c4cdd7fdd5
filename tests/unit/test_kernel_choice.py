"""The GPU path's choices (Liger, torch.compile) on any machine: what each setting picks on CPU and CUDA."""

import pytest

from lorakit.errors import ConfigError
from lorakit.train.kernels import choose_compile, choose_liger


def test_liger_auto_is_on_only_on_cuda_with_the_package_and_a_supported_model():
    assert choose_liger("auto", "cuda", True, "llama", True)[0] is True
    assert choose_liger("auto", "cpu", True, "llama", True) == (False, "cpu: Liger's Triton kernels run on CUDA only")
    assert choose_liger("auto", "cuda", False, "llama", False) == (
        False, "liger-kernel not installed (pip install liger-kernel)")
    assert choose_liger("auto", "cuda", True, "gpt2", False) == (False, "liger-kernel has no kernels for gpt2 models")
    assert choose_liger(False, "cuda", True, "llama", True) == (False, "train.liger: false in the recipe")


def test_liger_true_fails_clearly_where_it_cannot_run_on_cuda_and_changes_nothing_on_the_cpu(capsys):
    with pytest.raises(ConfigError, match="liger-kernel is not installed"):
        choose_liger(True, "cuda", False, "llama", False)
    with pytest.raises(ConfigError, match="no kernels for gpt2"):
        choose_liger(True, "cuda", True, "gpt2", False)
    assert choose_liger(True, "cpu", False, "llama", False)[0] is False
    assert "CUDA only" in capsys.readouterr().err


def test_compile_is_opt_in():
    assert choose_compile(False, "cuda")[0] is False
    assert choose_compile(True, "cuda")[0] is True and choose_compile(True, "cpu")[0] is True


def test_the_recipe_carries_the_choices():
    from lorakit.config import load_recipe

    recipe = load_recipe("sft", None, ["train.liger=false", "train.compile=true"], {})
    assert recipe.train.liger is False and recipe.train.compile is True
    assert load_recipe("dpo", None, [], {}).train.liger == "auto"
    with pytest.raises(ConfigError):
        load_recipe("sft", None, ["train.liger=sometimes"], {})
