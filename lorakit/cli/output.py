"""How commands print their result: a table on stdout, or JSON with --json."""

from __future__ import annotations


def print_config(resolved) -> None:
    from lorakit.config import recipe_to_yaml
    from lorakit.console import out

    out.print(recipe_to_yaml(resolved), markup=False)


def print_run_summary(title: str, summary: dict, as_json: bool) -> None:
    from lorakit.console import key_value_table, out, print_json
    from lorakit.train.launched import quiet_child

    if quiet_child():  # one of several training processes: the command that launched them prints the result
        return
    if as_json:
        print_json(summary)
    else:
        out.print(key_value_table(title, summary))
