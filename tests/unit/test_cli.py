"""The command line as a user meets it: help, versions, recipes and their errors (nothing loads a model)."""

import pytest
import yaml

from lorakit import __version__
from lorakit.cli import COMMANDS

from ..conftest import REPO
from ..helpers import assert_clean_error, invoke


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"lorakit {__version__}"


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "lorakit " in result.output


def test_python_dash_m_works():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "lorakit", "--version"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == f"lorakit {__version__}"


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from lorakit.cli import app; heavy = {'torch', 'matplotlib', 'lm_eval'} & set(sys.modules); "
            "assert not heavy, f'{heavy} imported'")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe):
    from lorakit.config import RECIPES, load_recipe

    text = recipe.read_text()
    assert text.startswith("# lorakit "), "a recipe opens with the command that runs it"
    stage = yaml.safe_load(text)["stage"]
    assert stage in RECIPES
    load_recipe(stage, recipe)


def test_print_config_resolves_flags_and_overrides():
    result = invoke("sft", "-r", REPO / "recipes/tiny-cpu-sft.yaml", "--print-config", "--max-steps", "7",
                    "--set", "lora.r=4", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["train"]["max_steps"] == 7 and resolved["lora"]["r"] == 4
    assert resolved["train"]["learning_rate"] == 1e-3


def test_unknown_recipe_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: sft\nlora:\n  rank: 8\n")
    assert_clean_error(invoke("sft", "-r", recipe), "lora.rank: unknown key; did you mean 'lora.r'?", code=2)


def test_merge_and_quantize_take_both_dtype_spellings(tmp_path):
    """bf16 (train.precision's spelling) is merge's bfloat16; bfloat16 (torch's) is quantize's GGUF bf16: accepted,
    the command goes on to the (missing) source."""
    from lorakit.config import MergeSection, QuantizeSection

    assert MergeSection(dtype="bf16").dtype == "bfloat16" and MergeSection(dtype="fp32").dtype == "float32"
    assert QuantizeSection(type="bfloat16").type == "bf16" and QuantizeSection(type="float16").type == "f16"
    for args in (["merge", tmp_path / "nope", "--dtype", "bf16"], ["quantize", tmp_path / "nope", "--type", "bfloat16"]):
        result = invoke(*args)
        assert result.exit_code != 0 and "nope" in result.output and "type" not in result.output.split("hint")[0]
    assert_clean_error(invoke("merge", tmp_path / "nope", "--dtype", "bf8"), "--dtype bf8 is not one of", code=2)


def test_training_commands_share_one_option_list():
    from lorakit.cli.train import TRAINING_COMMANDS

    helps = {spec.stage: invoke(spec.stage, "--help").output for spec in TRAINING_COMMANDS}
    for option in ("--recipe", "--model", "--data", "--max-steps", "--set", "--resume", "--num-processes", "--json"):
        assert all(option in text for text in helps.values()), option
    assert "--from" in helps["dpo"] and "--from" not in helps["sft"]
