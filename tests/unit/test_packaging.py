"""What `pip install lorakit` ships: every package, the bundled assets and the recipes."""

import tomllib

from ..conftest import REPO


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "lorakit").rglob("__init__.py")}
    assert folders | {"lorakit.recipes"} == listed


def test_shipped_recipes_are_installed_and_found_by_name():
    from lorakit.config import find_recipe, shipped_recipes

    names = {p.stem for p in (REPO / "recipes").glob("*.yaml")}
    assert set(shipped_recipes()) == names
    assert find_recipe("tiny-cpu-sft").read_text() == (REPO / "recipes" / "tiny-cpu-sft.yaml").read_text()
    assert find_recipe("tiny-cpu-sft.yaml").name == "tiny-cpu-sft.yaml"


def test_package_data_patterns_match_files():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for pattern in data["lorakit"]:
        assert list((REPO / "lorakit").glob(pattern)), f"package-data pattern {pattern} matches nothing"


def test_every_folder_that_ships_files_is_a_listed_package():
    """setuptools warns on every install ("Package 'lorakit.assets' is absent from the `packages` configuration")
    when a folder under lorakit/ holds files but is not a listed package: data folders are packages too."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    shipped = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "lorakit").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped <= listed, f"list these in [tool.setuptools] packages (with an __init__.py): {shipped - listed}"
