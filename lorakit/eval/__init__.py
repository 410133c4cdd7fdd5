"""`lorakit eval`: scores of runs, merged models and exports, each against its parent.

candidates (what a path is, its parent, loading it), loss (SFT-style data), preferences (DPO rewards),
regression (each candidate vs its parent), run (the command), render (its tables).
"""
