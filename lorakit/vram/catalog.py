"""Built-in shapes of popular models and the GPUs people train on, so `vram-estimate` works offline.

Shapes are copied from each model's config.json; `published_b` is the parameter count its card or hub page
publishes (a test checks that the shape reproduces it). GPU peaks are dense 16-bit tensor TFLOPS with fp32
accumulation (GeForce cards run at half their fp16-accumulate figure) from the vendors' whitepapers.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from lorakit.vram.shapes import ModelShape


def _m(name, published_b, hidden, layers, heads, kv_heads, intermediate, vocab, **kw):
    return ModelShape(name=name, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                      intermediate=intermediate, vocab=vocab, **kw), published_b


_LLAMA2 = dict(tied=False)
_QWEN2 = dict(attn_bias=True)
_QWEN3 = dict(head_dim=128, qk_norm=True)
_GEMMA = dict(head_dim=256, tied=True)
_GEMMA2 = dict(tied=True, norms_per_layer=4)
_GEMMA3 = dict(tied=True, norms_per_layer=4, qk_norm=True)
_NEOX = dict(gated_mlp=False, layer_norm=True, norms_per_layer=2, attn_bias=True, mlp_bias=True)
_PHI = dict(gated_mlp=False, layer_norm=True, norms_per_layer=1, attn_bias=True, mlp_bias=True)
_FALCON = dict(gated_mlp=False, layer_norm=True, tied=True, head_dim=64)
_BLOOM = dict(gated_mlp=False, layer_norm=True, attn_bias=True, mlp_bias=True, tied=True, alibi=True, embed_norm=True)
SIGLIP_400M = 416_866_032 + 2_360_320  # Gemma-3 vision tower + projector, frozen in text fine-tuning

_ENTRIES = [
    _m("meta-llama/Llama-2-7b-hf", 6.74, 4096, 32, 32, 32, 11008, 32000, **_LLAMA2),
    _m("meta-llama/Llama-2-13b-hf", 13.02, 5120, 40, 40, 40, 13824, 32000, **_LLAMA2),
    _m("meta-llama/Llama-2-70b-hf", 68.98, 8192, 80, 64, 8, 28672, 32000, **_LLAMA2),
    _m("meta-llama/Meta-Llama-3-8B", 8.03, 4096, 32, 32, 8, 14336, 128256),
    _m("meta-llama/Meta-Llama-3-70B", 70.55, 8192, 80, 64, 8, 28672, 128256),
    _m("meta-llama/Llama-3.1-8B", 8.03, 4096, 32, 32, 8, 14336, 128256),
    _m("meta-llama/Llama-3.1-70B", 70.55, 8192, 80, 64, 8, 28672, 128256),
    _m("meta-llama/Llama-3.2-1B", 1.24, 2048, 16, 32, 8, 8192, 128256, head_dim=64, tied=True),
    _m("meta-llama/Llama-3.2-3B", 3.21, 3072, 28, 24, 8, 8192, 128256, head_dim=128, tied=True),
    _m("meta-llama/Llama-3.3-70B-Instruct", 70.55, 8192, 80, 64, 8, 28672, 128256),
    _m("codellama/CodeLlama-34b-hf", 33.74, 8192, 48, 64, 8, 22016, 32000),
    _m("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1.10, 2048, 22, 32, 4, 5632, 32000),
    _m("TinyLlama/TinyLlama_v1.1", 1.10, 2048, 22, 32, 4, 5632, 32000),
    _m("mistralai/Mistral-7B-v0.1", 7.24, 4096, 32, 32, 8, 14336, 32000),
    _m("mistral-community/Mistral-7B-v0.2", 7.24, 4096, 32, 32, 8, 14336, 32000),
    _m("mistralai/Mistral-7B-v0.3", 7.25, 4096, 32, 32, 8, 14336, 32768),
    _m("mistralai/Mixtral-8x7B-v0.1", 46.70, 4096, 32, 32, 8, 14336, 32000, experts=8, active_experts=2),
    _m("Qwen/Qwen2.5-0.5B", 0.494, 896, 24, 14, 2, 4864, 151936, tied=True, **_QWEN2),
    _m("Qwen/Qwen2.5-1.5B", 1.54, 1536, 28, 12, 2, 8960, 151936, tied=True, **_QWEN2),
    _m("Qwen/Qwen2.5-3B", 3.09, 2048, 36, 16, 2, 11008, 151936, tied=True, **_QWEN2),
    _m("Qwen/Qwen2.5-7B", 7.62, 3584, 28, 28, 4, 18944, 152064, **_QWEN2),
    _m("Qwen/Qwen2.5-14B", 14.77, 5120, 48, 40, 8, 13824, 152064, **_QWEN2),
    _m("Qwen/Qwen2.5-32B", 32.76, 5120, 64, 40, 8, 27648, 152064, **_QWEN2),
    _m("Qwen/Qwen2.5-72B", 72.71, 8192, 80, 64, 8, 29568, 152064, **_QWEN2),
    _m("Qwen/Qwen3-0.6B", 0.596, 1024, 28, 16, 8, 3072, 151936, tied=True, **_QWEN3),
    _m("Qwen/Qwen3-1.7B", 1.72, 2048, 28, 16, 8, 6144, 151936, tied=True, **_QWEN3),
    _m("Qwen/Qwen3-4B", 4.02, 2560, 36, 32, 8, 9728, 151936, tied=True, **_QWEN3),
    _m("Qwen/Qwen3-8B", 8.19, 4096, 36, 32, 8, 12288, 151936, **_QWEN3),
    _m("Qwen/Qwen3-14B", 14.77, 5120, 40, 40, 8, 17408, 151936, **_QWEN3),
    _m("Qwen/Qwen3-32B", 32.76, 5120, 64, 64, 8, 25600, 151936, **_QWEN3),
    _m("google/gemma-2b", 2.51, 2048, 18, 8, 1, 16384, 256000, **_GEMMA),
    _m("google/gemma-7b", 8.54, 3072, 28, 16, 16, 24576, 256000, **_GEMMA),
    _m("google/gemma-2-2b", 2.61, 2304, 26, 8, 4, 9216, 256000, head_dim=256, **_GEMMA2),
    _m("google/gemma-2-9b", 9.24, 3584, 42, 16, 8, 14336, 256000, head_dim=256, **_GEMMA2),
    _m("google/gemma-2-27b", 27.23, 4608, 46, 32, 16, 36864, 256000, head_dim=128, **_GEMMA2),
    _m("google/gemma-3-1b-pt", 1.00, 1152, 26, 4, 1, 6912, 262144, head_dim=256, **_GEMMA3),
    _m("google/gemma-3-4b-pt", 4.30, 2560, 34, 8, 4, 10240, 262208, head_dim=256, extra_params=SIGLIP_400M,
       **_GEMMA3),
    _m("google/gemma-3-12b-pt", 12.19, 3840, 48, 16, 8, 15360, 262208, head_dim=256, extra_params=SIGLIP_400M,
       **_GEMMA3),
    _m("google/gemma-3-27b-pt", 27.43, 5376, 62, 32, 16, 21504, 262208, head_dim=128, extra_params=SIGLIP_400M,
       **_GEMMA3),
    _m("microsoft/phi-1_5", 1.42, 2048, 24, 32, 32, 8192, 51200, **_PHI),
    _m("microsoft/phi-2", 2.78, 2560, 32, 32, 32, 10240, 51200, **_PHI),
    _m("microsoft/Phi-3-mini-4k-instruct", 3.82, 3072, 32, 32, 32, 8192, 32064),
    _m("microsoft/phi-4", 14.66, 5120, 40, 40, 10, 17920, 100352),
    _m("HuggingFaceTB/SmolLM2-135M", 0.135, 576, 30, 9, 3, 1536, 49152, tied=True),
    _m("HuggingFaceTB/SmolLM2-360M", 0.362, 960, 32, 15, 5, 2560, 49152, tied=True),
    _m("HuggingFaceTB/SmolLM2-1.7B", 1.71, 2048, 24, 32, 32, 8192, 49152, tied=True),
    _m("tiiuae/falcon-7b", 6.92, 4544, 32, 71, 1, 18176, 65024, norms_per_layer=1, attn_bias=False, **_FALCON),
    _m("tiiuae/falcon-40b", 41.30, 8192, 60, 128, 8, 32768, 65024, norms_per_layer=2, attn_bias=False, **_FALCON),
    _m("stabilityai/stablelm-3b-4e1t", 2.80, 2560, 32, 32, 32, 6912, 50304, layer_norm=True),
    _m("stabilityai/stablelm-base-alpha-3b", 3.64, 4096, 16, 32, 32, 16384, 50688, **_NEOX),
    _m("EleutherAI/pythia-14m", 0.0141, 128, 6, 4, 4, 512, 50304, **_NEOX),
    _m("EleutherAI/pythia-31m", 0.0305, 256, 6, 8, 8, 1024, 50304, **_NEOX),
    _m("EleutherAI/pythia-70m", 0.0704, 512, 6, 8, 8, 2048, 50304, **_NEOX),
    _m("EleutherAI/pythia-160m", 0.162, 768, 12, 12, 12, 3072, 50304, **_NEOX),
    _m("EleutherAI/pythia-410m", 0.405, 1024, 24, 16, 16, 4096, 50304, **_NEOX),
    _m("EleutherAI/pythia-1b", 1.01, 2048, 16, 8, 8, 8192, 50304, **_NEOX),
    _m("EleutherAI/pythia-1.4b", 1.41, 2048, 24, 16, 16, 8192, 50304, **_NEOX),
    _m("EleutherAI/pythia-2.8b", 2.78, 2560, 32, 32, 32, 10240, 50304, **_NEOX),
    _m("EleutherAI/pythia-6.9b", 6.86, 4096, 32, 32, 32, 16384, 50432, **_NEOX),
    _m("EleutherAI/pythia-12b", 11.85, 5120, 36, 40, 40, 20480, 50688, **_NEOX),
    _m("bigscience/bloom-560m", 0.559, 1024, 24, 16, 16, 4096, 250880, **_BLOOM),
    _m("bigscience/bloom-1b1", 1.07, 1536, 24, 16, 16, 6144, 250880, **_BLOOM),
    _m("bigscience/bloom-1b7", 1.72, 2048, 24, 16, 16, 8192, 250880, **_BLOOM),
    _m("bigscience/bloom-3b", 3.00, 2560, 30, 32, 32, 10240, 250880, **_BLOOM),
    _m("bigscience/bloom-7b1", 7.07, 4096, 30, 32, 32, 16384, 250880, **_BLOOM),
    _m("bigcode/gpt_bigcode-santacoder", 1.12, 2048, 24, 16, 1, 8192, 49280, gated_mlp=False, layer_norm=True,
       attn_bias=True, mlp_bias=True, tied=True, positions=2048, max_positions=2048),
    _m("ibm/PowerLM-3b", 3.51, 2304, 40, 36, 36, 9216, 49152, tied=True),
    _m("google-bert/bert-large-uncased", 0.335, 1024, 24, 16, 16, 4096, 30522, gated_mlp=False, layer_norm=True,
       attn_bias=True, mlp_bias=True, positions=514, encoder=True, dropout=0.1),
]

MODELS: dict[str, ModelShape] = {shape.name: shape for shape, _ in _ENTRIES}
PUBLISHED_B: dict[str, float] = {shape.name: published for shape, published in _ENTRIES}
# Names people type: the repo id without its org, case-insensitive, and common aliases.
_ALIASES = {"bert-large-uncased": "google-bert/bert-large-uncased",
            "meta-llama/Meta-Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
            "mistralai/Mistral-7B-v0.2": "mistral-community/Mistral-7B-v0.2",
            "TinyLlama/TinyLlama-1.1B": "TinyLlama/TinyLlama_v1.1"}
# What mirrors and checkpoints add to a catalog model's name without changing its shape, stripped until none is left:
# quantized or converted uploads (unsloth's -bnb-4bit, TheBloke's -GPTQ/-AWQ/-GGUF, -fp16), intermediate training
# checkpoints (TinyLlama's -intermediate-step-1431k-3T, Pythia's -step143000, -deduped), and instruction/chat releases
# of the same base (-Instruct-v0.3, -it, BLOOMZ/-mt of BLOOM).
_SUFFIXES = [
    r"-(unsloth-)?bnb-[48]bit$", r"-[48]bit$", r"-(gptq|awq|gguf|exl2|mlx|fp16|bf16|fp8|hf)$",
    r"-intermediate-step-[\w.-]+$", r"-step-?\d+k?(-[\d.]+t)?$", r"-\d+k-[\d.]+t$", r"-deduped$", r"-(mt|p3)$",
    r"-(instruct|chat|it|pt|base)(?=-|$)",
]
_FAMILIES = [(r"^bloomz(?=-)", "bloom")]


def _normalize(name: str) -> str:
    key = name.strip().lower()
    for pattern, repl in _FAMILIES:
        key = re.sub(pattern, repl, key)
    while True:
        stripped = key
        for pattern in _SUFFIXES:
            stripped = re.sub(pattern, "", stripped)
        if stripped == key:
            return key
        key = stripped


def _index() -> dict[str, str]:
    index: dict[str, str] = {}
    for name in MODELS:
        index[_normalize(name)] = name
        index.setdefault(_normalize(name.split("/", 1)[-1]), name)
    for alias, name in _ALIASES.items():
        index[_normalize(alias)] = name
        index.setdefault(_normalize(alias.split("/", 1)[-1]), name)
    return index


def match_model(name: str) -> str | None:
    """The catalog model whose shape `name` has: the repo id itself, a bare name, an instruct/chat release, a mirror
    under another organization (unsloth/, NousResearch/, TheBloke/...) or an intermediate training checkpoint."""
    if name in MODELS:
        return name
    index = _index()
    for key in (_normalize(name), _normalize(name.split("/", 1)[-1])):
        if key in index:
            return index[key]
    return None


def find_model(name: str) -> ModelShape | None:
    """Catalog lookup by repo id or bare name; releases, mirrors and checkpoints share their base's shape."""
    found = match_model(name)
    return MODELS[found] if found else None


def same_shape(shape: ModelShape) -> str | None:
    """The catalog model with exactly this shape (a config.json of a mirror or checkpoint), if any."""
    fields = lambda m: {k: v for k, v in m.__dict__.items() if k != "name"}  # noqa: E731
    wanted = fields(shape)
    return next((name for name, model in MODELS.items() if fields(model) == wanted), None)


def close_models(name: str, n: int = 3) -> list[str]:
    index = _index()
    return [index[key] for key in difflib.get_close_matches(_normalize(name), list(index), n=n, cutoff=0.5)]


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    memory_gib: float  # what torch.cuda.get_device_properties reports, not the box
    tflops_16: float  # dense bf16/fp16 tensor peak, fp32 accumulate
    bf16: bool = True


GPUS: dict[str, GPU] = {gpu.key: gpu for gpu in [
    GPU("rtx3060", "RTX 3060 12GB", 12.0, 25.6),
    GPU("rtx3080", "RTX 3080 10GB", 10.0, 59.5),
    GPU("rtx3090", "RTX 3090 24GB", 24.0, 71.0),
    GPU("rtx4060ti", "RTX 4060 Ti 16GB", 16.0, 44.2),
    GPU("rtx4070ti", "RTX 4070 Ti 12GB", 12.0, 80.2),
    GPU("rtx4080", "RTX 4080 16GB", 16.0, 97.5),
    GPU("rtx4090", "RTX 4090 24GB", 24.0, 165.2),
    GPU("rtx5090", "RTX 5090 32GB", 31.4, 209.5),
    GPU("t4", "T4 16GB", 15.0, 65.0, bf16=False),
    GPU("a10g", "A10G 24GB", 22.5, 70.0),
    GPU("l4", "L4 24GB", 22.5, 121.0),
    GPU("a100-40gb", "A100 40GB", 40.0, 312.0),
    GPU("a100-80gb", "A100 80GB", 80.0, 312.0),
    GPU("h100", "H100 80GB", 79.6, 989.0),
    GPU("h200", "H200 141GB", 140.4, 989.0),
]}


def _gpu_key(name: str) -> str:
    return name.lower().replace("nvidia", "").replace("geforce", "").replace(" ", "").replace("-", "").replace("_", "")


def find_gpu(name: str) -> GPU | None:
    key = _gpu_key(name)
    for gpu in GPUS.values():
        if key in (_gpu_key(gpu.key), _gpu_key(gpu.name)):
            return gpu
    aliases = {"a100": "a100-80gb", "a10": "a10g", "h100sxm": "h100", "h100pcie": "h100", "4090": "rtx4090",
               "3090": "rtx3090", "5090": "rtx5090", "4080": "rtx4080", "3060": "rtx3060", "3080": "rtx3080"}
    return GPUS.get(aliases.get(key, ""))


def close_gpus(name: str) -> list[str]:
    keys = {_gpu_key(gpu.key): gpu.key for gpu in GPUS.values()}
    return [keys[k] for k in difflib.get_close_matches(_gpu_key(name), list(keys), n=3, cutoff=0.4)]
