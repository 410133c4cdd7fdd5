"""lorakit: LoRA/QLoRA fine-tuning, DPO, merging and deploy-quantization for one consumer GPU.

Only the version lives here so that `lorakit --help` never imports torch.
"""

__version__ = "0.1.0"
