"""GPU-memory planning: model shapes, the estimate (pure arithmetic), and what fits where.

Nothing in this package imports torch: `lorakit vram-estimate` answers in well under a second, and training
commands run the same estimate before any weights load.
"""
