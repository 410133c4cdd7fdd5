"""report.html: a run's curves and numbers as one self-contained page, and a page comparing several outputs.

Every training run gets `report.html`, written into the staging folder with the adapter so it lands atomically with
the run, and redrawn when `lorakit eval` adds results. `lorakit report A B C` writes one page comparing outputs
(curves overlaid, headline metrics, the lineage base -> sft -> dpo -> merged -> export); `lorakit run` writes one for
its pipeline. Plots are inline SVG drawn by matplotlib; the page has no script and loads nothing from the network.
Drawing a report never fails the command that asked for it: any error becomes a warning (`write_run_report_safely`).

view (what a page shows of an output), plots (SVG charts), pages (tables and pages), write (the files). This package
reads outputs through lorakit.outputs only: it knows nothing of training, export or pipelines.
"""

from lorakit.report.write import (
                                  write_comparison_report,
                                  write_pipeline_report,
                                  write_run_report,
                                  write_run_report_safely,
)

__all__ = ["write_comparison_report", "write_pipeline_report", "write_run_report", "write_run_report_safely"]
