"""`lorakit eval`: scores of runs, merged models and exports, each against its parent.

candidates (what a path is, its parent, loading it), loss (SFT-style data), preferences (DPO rewards),
regression (each candidate vs its parent), run (the command), render (its tables), benchmarks (lm-evaluation-harness),
tasks (a user's jsonl question set as an lm-eval task), report (report.html: plots and tables of runs).
"""
