"""Everything lorakit writes and reads back: run folders, merged models, exports, copied bases, GGUF imports.

layout (every file and folder name), manifest (strict typed manifests, one per kind), integrity (damaged-folder
checks), runs (a run being written, a finished run read back), output (`open_output`: what a path is, its parent and
lineage), lock (one writer per output). Nothing outside this package parses a manifest.
"""

from lorakit.outputs.integrity import Damaged
from lorakit.outputs.lock import OutputBusy, check_not_being_written, hold_output, writer_of
from lorakit.outputs.manifest import (
                                      TRAINING_STAGES,
                                      BaseCopyManifest,
                                      BaseModelRecord,
                                      DPOManifest,
                                      ExportManifest,
                                      GGUFImportManifest,
                                      LineageEntry,
                                      Manifest,
                                      MergeManifest,
                                      ParentRecord,
                                      SFTManifest,
                                      TrainingRunManifest,
                                      manifest_json,
                                      now,
                                      package_versions,
                                      read_manifest,
                                      write_manifest,
)
from lorakit.outputs.output import Lineage, Output, open_output, training_run_behind
from lorakit.outputs.runs import Run, RunFolder, read_metrics, read_run

__all__ = [
    "Damaged", "OutputBusy", "check_not_being_written", "hold_output", "writer_of", "TRAINING_STAGES",
    "BaseCopyManifest", "BaseModelRecord", "DPOManifest", "ExportManifest", "GGUFImportManifest", "LineageEntry",
    "Manifest", "ParentRecord",
    "MergeManifest", "SFTManifest", "TrainingRunManifest", "manifest_json", "now", "package_versions",
    "read_manifest", "write_manifest", "Lineage", "Output", "open_output", "training_run_behind", "Run", "RunFolder",
    "read_metrics", "read_run",
]
