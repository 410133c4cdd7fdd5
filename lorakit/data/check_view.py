"""How `lorakit data check` shows its result: the summary, one table of findings (rows named, with what they hold and
what they match), and the `--show` examples; or all of it as JSON."""

from __future__ import annotations

from lorakit.console import key_value_table, out, print_json
from lorakit.data.inspect import DataCheck
from lorakit.data.show import print_explained, print_template


def render_check(check: DataCheck, title: str, as_json: bool) -> None:
    if as_json:
        print_json(check.to_json())
        return
    out.print(key_value_table(title, check.summary))
    if check.findings:
        out.print(findings_table(check))
    for number, explained in enumerate(check.examples):
        out.print()
        if number == 0:
            print_template(out, explained)
        print_explained(out, explained)


def findings_table(check: DataCheck):
    from pathlib import Path

    from rich.table import Table

    dropped = any(item["dropped"] for item in check.findings)
    table = Table(title="findings (1-based rows; sim: estimated Jaccard similarity, or the share of the benchmark "
                        "row's n-grams found in the row)", title_justify="left")
    for column, ratio in (("kind", 2), ("row", 1), ("text", 4), ("matches", 4), ("sim", 1)):
        table.add_column(column, overflow="fold", ratio=ratio)
    if dropped:
        table.add_column("dropped")
    for item in check.findings:
        where = item["matches"]
        if " row " in where:  # a file path: its name is enough here (--json has the path)
            file, _, number = where.rpartition(" row ")
            where = f"{Path(file).name if '/' in file else file} row {number}"
        matches = f"{where}: {item['matching_text']}" if item["matching_text"] else where
        cells = [item["kind"], str(item["row"]), item["text"], matches, f"{item['similarity']:.2f}"]
        table.add_row(*cells, *(["yes" if item["dropped"] else ""] if dropped else []))
    counts = check.screen.counts()
    listed = len(check.findings)
    total = sum(counts[k] for k in ("exact_duplicates", "near_duplicates", "eval_duplicates", "same_answers",
                                    "contaminated"))
    if total > listed:
        table.caption = f"{listed} of {total} findings listed (the counts above are complete)"
    return table
