"""`lorakit run`: sft -> dpo -> merge -> quantize from one pipeline recipe (run), every stage checked first (checks)."""

from lorakit.pipeline.run import Pipeline, PipelineResult, StageOutcome, pipeline_table

__all__ = ["Pipeline", "PipelineResult", "StageOutcome", "pipeline_table"]
