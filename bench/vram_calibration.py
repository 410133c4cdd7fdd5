"""The estimator against published measured peaks, row by row.

    python bench/vram_calibration.py [CSV]      # default: tests/data/vram_calibration.csv

Prints each row's configuration, measured and estimated GB and the error, then the median and worst absolute
error (the figures quoted in the README).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from lorakit.vram.calibration import calibrate, summary  # noqa: E402


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "tests" / "data" / "vram_calibration.csv"
    rows = calibrate(path)
    table = Table(title=f"vram-estimate vs measured ({path.name})", title_justify="left")
    for column in ("row", "model", "setup", "measured", "estimated", "error"):
        table.add_column(column, justify="right" if column in ("measured", "estimated", "error") else "left")
    for r in rows:
        s = r.setup
        setup = (f"{s.method}/{s.stage} {s.dtype} seq {s.seq_len}x{s.batch_size} gc {'on' if s.grad_checkpointing else 'off'}"
                 f" {s.optimizer or 'auto'} {s.loss} [{r.metric}]")
        table.add_row(str(r.index), r.model, setup, f"{r.measured / 1e9:.2f}", f"{r.predicted / 1e9:.2f}",
                      f"{100 * r.error:+.1f}%")
    console = Console(width=160)
    console.print(table)
    stats = summary(rows)
    console.print(f"{stats['rows']} rows: median |error| {100 * stats['median_abs_error']:.1f}%, worst "
                  f"{100 * stats['worst_abs_error']:.1f}%, mean signed {100 * stats['mean_signed_error']:+.1f}%")


if __name__ == "__main__":
    main()
