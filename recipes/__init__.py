"""The shipped recipes, installed as the package lorakit.recipes (see pyproject.toml)."""
