"""Before a benchmark score is trusted: did the runs being scored train on the benchmark's own rows?

`lorakit eval --tasks FILE.jsonl` (and `--task-file` with local data) checks each run's training data against those
files with the data screen's n-gram index (lorakit.data.contamination, the run's own contamination settings) and
warns, naming the rows, when a run trained on them: its score then measures recall of its training data. Registry
benchmarks whose rows live on the hub are not checked here: pass their rows to `lorakit data check --against`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from lorakit.console import warn
from lorakit.data.benchmark_files import benchmark_rows
from lorakit.data.contamination import BenchmarkIndex
from lorakit.data.preference import canonical_pairs
from lorakit.data.quality import named_rows
from lorakit.data.sft import canonical_rows
from lorakit.data.texts import benchmark_segments, pair_segments, sft_segments
from lorakit.errors import LorakitError


def local_task_files(plan) -> list[str]:
    """The benchmark files of a plan whose rows are on this disk (a user's jsonl; a task YAML with local data)."""
    return [t.source for t in plan.tasks if t.source and t.origin in ("local", "task-file")]


def check_runs_against(runs, files: list[str]) -> list[dict[str, Any]]:
    """One record per run that trained on rows of `files` (and a warning line each)."""
    found = []
    seen: set[Path] = set()
    for run in runs:
        if run.path in seen or run.stage not in ("sft", "dpo"):
            continue
        seen.add(run.path)
        data = run.recipe.data
        if not data.train or not Path(data.train).exists():
            continue  # trained elsewhere: its data is not here to check
        index = BenchmarkIndex(data.contamination_ngram)
        try:
            for file in files:
                index.add(file, ((n, benchmark_segments(row)) for n, row in benchmark_rows(file, "--tasks")))
            if run.stage == "dpo":
                rows, segments = canonical_pairs(data.train, data, data.max_rows)[0], pair_segments
            else:
                rows, segments = canonical_rows(data.train, data, data.max_rows)[0], sft_segments
        except LorakitError:
            continue  # a task whose data is not local, a training file that changed shape: nothing to compare
        scan = index.scan((segments(row) for row in rows), data.contamination_threshold)
        if not scan.found:
            continue
        benchmarks = sorted({c.benchmark.source for c in scan.found})
        record = {"run": str(run.path), "train": data.train, "rows": len(scan.found), "of": len(rows),
                  "benchmarks": benchmarks, "examples": [
                      {"row": c.row + 1, "benchmark": c.benchmark.source, "benchmark_row": c.benchmark.row,
                       "text": c.benchmark.text, "overlap": c.overlap} for c in scan.found[:10]]}
        found.append(record)
        warn(escape(f"{run.path.name}: {len(scan.found)} of its {len(rows)} training rows contain a row of "
                    f"{', '.join(Path(b).name for b in benchmarks)} ({data.train} rows "
                    f"{named_rows([c.row for c in scan.found])}): its score there measures recall of its training "
                    f"data, not what it learned beyond it (details: lorakit data check {data.train} --against "
                    f"{benchmarks[0]})"))
    return found
