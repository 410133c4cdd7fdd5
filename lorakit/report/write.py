"""Writing report.html: a run's own page (drawn with the run, redrawn by eval), a page comparing several outputs
(`lorakit report`), and the page of a pipeline (`lorakit run`)."""

from __future__ import annotations

import os
from pathlib import Path

from lorakit.console import warn
from lorakit.errors import RunError
from lorakit.io import write_text_atomic
from lorakit.outputs import hold_output
from lorakit.outputs.layout import PIPELINE_FOLDERS, REPORT_FILE, STATE_FILE, has_manifest
from lorakit.report.pages import comparison_page, run_page
from lorakit.report.view import STAGE_ORDER, read_view


def write_run_report(folder: str | Path, display: str | Path | None = None) -> Path:
    """Write FOLDER/report.html (atomically); `display` is where the folder will live (a run still in staging)."""
    folder = Path(folder)
    html_text = run_page(read_view(folder, Path(display) if display else None))
    target = folder / REPORT_FILE
    write_text_atomic(target, html_text)
    return target


def write_run_report_safely(folder: str | Path, display: str | Path | None = None) -> Path | None:
    """write_run_report, with any failure (a plotting library problem, odd metrics) turned into a warning."""
    try:
        return write_run_report(folder, display)
    except Exception as exc:  # a report is a convenience: it must never fail the run or eval that asked for it
        warn(f"report.html was not written for {display or folder}: {type(exc).__name__}: {exc}")
        return None


def expand(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The output folders among `paths` (a pipeline root gives its stage folders); what was skipped and why."""
    folders, skipped = [], []
    for path in paths:
        if path.is_dir() and (path / STATE_FILE).is_file() and not has_manifest(path):
            folders += [path / name for name in PIPELINE_FOLDERS.values() if has_manifest(path / name)]
        elif (path.is_dir() and has_manifest(path)) or (path.suffix == ".gguf" and path.is_file()):
            folders.append(path.parent if path.is_file() else path)
        elif path.name in (STATE_FILE, REPORT_FILE):
            continue  # `lorakit report out/pipeline/*` also matches the pipeline's own files
        elif path.exists():
            skipped.append(f"{path} (not an output folder lorakit wrote)")
        else:
            skipped.append(f"{path} (not found)")
    unique = list({str(p.resolve()): p for p in folders}.values())
    return unique, skipped


def default_target(folders: list[Path]) -> Path:
    if len(folders) == 1:
        return folders[0] / REPORT_FILE
    common = Path(os.path.commonpath([str(p.resolve()) for p in folders]))
    return common / REPORT_FILE


def write_comparison_report(paths: list[Path], output: Path | None = None) -> tuple[Path, list[str]]:
    """One page over several outputs (or the run's own report for one); returns its path and what was skipped.
    The page has one writer at a time (a second `lorakit report`, or eval redrawing it, is refused meanwhile)."""
    folders, skipped = expand([Path(p) for p in paths])
    if not folders:
        raise RunError("no output folders to report on" + (f": skipped {', '.join(skipped)}" if skipped else ""),
                       hint="pass run, merged or export folders written by lorakit (or a pipeline's root)")
    if len(folders) == 1 and output is None:
        with hold_output(folders[0] / REPORT_FILE, "lorakit report"):
            return write_run_report(folders[0]), skipped
    target = Path(output) if output else default_target(folders)
    if target.is_dir():
        target = target / REPORT_FILE
    with hold_output(target, "lorakit report"):
        views = sorted((read_view(f) for f in folders), key=lambda v: (STAGE_ORDER.get(v.stage, 9), str(v.path)))
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, comparison_page(views, target))
    return target, skipped


def write_pipeline_report(root: Path, folders: list[Path]) -> Path | None:
    """`lorakit run`'s closing page over the stages that exist; a failure is a warning."""
    present = [f for f in folders if has_manifest(f)]
    if not present:
        return None
    try:
        return write_comparison_report(present, root / REPORT_FILE)[0]
    except Exception as exc:  # the pipeline's outputs are what matter; its report is a convenience
        warn(f"{root / REPORT_FILE} was not written: {type(exc).__name__}: {exc}")
        return None
