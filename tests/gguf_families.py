"""Tiny random models of every architecture docs/gguf.md's family table lists, from transformers' own config classes.

Each is built locally (hidden 64, 2 layers) with lorakit's tiny byte-level BPE tokenizer and the ChatML template,
saved with `save_pretrained`, so the GGUF export reads it as it reads a real merged model. Sizes a runtime reads
from its own defaults instead of the file are given their released values, so the export can be read back:
transformers' GGUF reader ignores Qwen3's head size and Qwen3-MoE's expert width (128 and 768, as released) and Gemma's
query_pre_attn_scalar (256), llama.cpp scales Gemma's attention by the head size (256 in Gemma 2/3 releases, equal to
query_pre_attn_scalar) and always normalizes Qwen3-MoE's top-k router weights (norm_topk_prob: true, as released).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)


@dataclass(frozen=True)
class Family:
    name: str                  # as in docs/gguf.md's family table
    config_class: str          # transformers config class
    hf_arch: str               # config.json architectures[0]
    gguf_arch: str             # general.architecture the converter writes
    overrides: dict = field(default_factory=dict)
    ci: bool = False           # exported in the default test tier (the rest: LORAKIT_REAL_FULL=1)
    transformers_judges: bool = True  # False: transformers' reader fails on (or misreads) the file; llama.cpp judges


FAMILIES = [
    Family("Llama 3.x / SmolLM2", "LlamaConfig", "LlamaForCausalLM", "llama",
           dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 256})),
    Family("Mistral", "MistralConfig", "MistralForCausalLM", "llama"),
    Family("Qwen2.5", "Qwen2Config", "Qwen2ForCausalLM", "qwen2", dict(tie_word_embeddings=True)),
    Family("Qwen3", "Qwen3Config", "Qwen3ForCausalLM", "qwen3", dict(head_dim=128)),
    Family("Qwen3-MoE", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", "qwen3moe",
           dict(head_dim=128, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=768, norm_topk_prob=True),
           ci=True),
    Family("Gemma 2", "Gemma2Config", "Gemma2ForCausalLM", "gemma2",
           dict(head_dim=256, query_pre_attn_scalar=256, sliding_window=128)),
    Family("Gemma 3 (text)", "Gemma3TextConfig", "Gemma3ForCausalLM", "gemma3",
           dict(head_dim=256, query_pre_attn_scalar=256, sliding_window=128), ci=True),
    Family("Phi-3 / Phi-4", "Phi3Config", "Phi3ForCausalLM", "phi3"),
    Family("SmolLM3", "SmolLM3Config", "SmolLM3ForCausalLM", "smollm3"),
    Family("Granite 3", "GraniteConfig", "GraniteForCausalLM", "granite"),
    Family("OLMo-2", "Olmo2Config", "Olmo2ForCausalLM", "olmo2", ci=True),
    Family("Qwen2-MoE", "Qwen2MoeConfig", "Qwen2MoeForCausalLM", "qwen2moe",
           dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32),
           transformers_judges=False),
    Family("Mixtral", "MixtralConfig", "MixtralForCausalLM", "llama", dict(num_local_experts=4,
                                                                           num_experts_per_tok=2),
           transformers_judges=False),
    Family("Granite MoE", "GraniteMoeConfig", "GraniteMoeForCausalLM", "granitemoe",
           dict(num_local_experts=4, num_experts_per_tok=2)),
    Family("OLMo", "OlmoConfig", "OlmoForCausalLM", "olmo"),
    Family("StarCoder2", "Starcoder2Config", "Starcoder2ForCausalLM", "starcoder2"),
    Family("StableLM", "StableLmConfig", "StableLmForCausalLM", "stablelm"),
]


def build_family_model(family: Family, folder: Path) -> Path:
    """The family's tiny random model, saved as a merged model folder would be."""
    import torch
    import transformers

    from lorakit.tiny import TinySpec, build_tokenizer

    tokenizer = build_tokenizer(TinySpec(chat_template=CHATML))
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), **{**SMALL, **family.overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # a spread that makes the logits far from flat, so a wrong mapping shows in the KL
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
