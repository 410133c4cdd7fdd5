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
