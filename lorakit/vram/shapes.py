"""A decoder (or encoder) model's shape, the only thing the estimator needs to know about a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LINEAR_NAMES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int = 0  # 0: hidden // heads
    tied: bool = False
    gated_mlp: bool = True  # SwiGLU/GeGLU: gate, up, down; otherwise fc1, fc2 (named up, down here)
    experts: int = 0  # MoE: experts per layer (0: dense)
    active_experts: int = 0
    attn_bias: bool = False  # q/k/v biases (Qwen2) or all attention biases
    mlp_bias: bool = False
    layer_norm: bool = False  # LayerNorm (weight + bias) instead of RMSNorm
    norms_per_layer: int = 2  # Gemma-2/3: 4, parallel blocks (Phi, Falcon): 1
    qk_norm: bool = False  # Qwen3, Gemma-3
    positions: int = 0  # learned position embeddings (BERT, GPT-BigCode)
    extra_params: int = 0  # parts the estimator does not model layer by layer (a vision tower), kept frozen
    encoder: bool = False  # bidirectional encoder with a small classification head instead of an LM head
    dropout: float = 0.0  # hidden and attention dropout active in training (BERT: 0.1)
    max_positions: int = 0
    alibi: bool = False  # ALiBi attention biases instead of rotary or learned positions (BLOOM)
    embed_norm: bool = False  # a LayerNorm right after the token embeddings (BLOOM)

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear in one layer, per expert for MoE MLPs."""
        h, d = self.hidden, self.dim
        return {
            "q": (h, self.heads * d), "k": (h, self.kv_heads * d), "v": (h, self.kv_heads * d),
            "o": (self.heads * d, h),
            **({"gate": (h, self.intermediate)} if self.gated_mlp else {}),
            "up": (h, self.intermediate), "down": (self.intermediate, h),
        }

    def linear_params(self, name: str) -> int:
        fan_in, fan_out = self.linear_shapes()[name]
        return fan_in * fan_out * (self.experts if self.is_mlp(name) and self.experts else 1)

    @staticmethod
    def is_mlp(name: str) -> bool:
        return name in ("gate", "up", "down")

    def layer_linear_params(self) -> int:
        return sum(self.linear_params(name) for name in self.linear_shapes())

    def layer_other_params(self) -> int:
        """Biases, norms and routers: small, never quantized."""
        h, d = self.hidden, self.dim
        shapes = self.linear_shapes()
        biases = 0
        if self.attn_bias:
            biases += sum(shapes[n][1] for n in ("q", "k", "v"))
            biases += h if self.layer_norm else 0  # LayerNorm-era models bias o_proj too
        if self.mlp_bias:
            biases += sum(shapes[n][1] for n in shapes if self.is_mlp(n)) * max(self.experts, 1)
        norms = self.norms_per_layer * h * (2 if self.layer_norm else 1) + (2 * d if self.qk_norm else 0)
        router = h * self.experts if self.experts else 0
        return biases + norms + router

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden + self.positions * self.hidden

    @property
    def head_params(self) -> int:
        if self.encoder:
            return self.hidden * self.hidden + self.hidden + 2 * self.hidden  # pooler + 2-class classifier
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def final_norm_params(self) -> int:
        norm = self.hidden * (2 if self.layer_norm else 1)
        return norm * (2 if self.embed_norm else 1)

    @property
    def quantizable_params(self) -> int:
        """What bitsandbytes turns into 4-bit: the decoder's linear layers (embeddings and the head stay 16-bit)."""
        return self.layers * self.layer_linear_params()

    @property
    def total_params(self) -> int:
        return (self.layers * (self.layer_linear_params() + self.layer_other_params()) + self.embed_params
                + self.head_params + self.final_norm_params + self.extra_params)

    @property
    def active_params(self) -> int:
        """Parameters a token passes through (MoE: only the routed experts), for FLOPs."""
        if not self.experts:
            return self.total_params - self.extra_params
        per_expert = sum(self.linear_params(n) for n in self.linear_shapes() if self.is_mlp(n)) // self.experts
        inactive = self.layers * per_expert * (self.experts - self.active_experts)
        return self.total_params - self.extra_params - inactive

    def lora_params(self, r: int, targets: tuple[str, ...]) -> int:
        """Adapter parameters on the targets this model has (all-linear names a gate that plain MLPs lack)."""
        shapes = self.linear_shapes()
        total = 0
        for name in (t for t in targets if t in shapes):
            fan_in, fan_out = shapes[name]
            total += r * (fan_in + fan_out) * (self.experts if self.is_mlp(name) and self.experts else 1)
        return self.layers * total

    def describe(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "layers": self.layers, "heads": self.heads, "kv_heads": self.kv_heads,
                "head_dim": self.dim, "intermediate": self.intermediate, "vocab": self.vocab, "tied": self.tied,
                "experts": self.experts, "active_experts": self.active_experts, "params": self.total_params}


# config.json keys of the architectures the estimator knows how to read
_GATED = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
          "gemma3", "phi3", "olmo", "olmo2", "cohere", "granite", "granitemoe", "stablelm", "deepseek_v2"}
# one norm per layer (parallel attention + MLP on one normalized input); GPT-NeoX keeps two even when parallel
_PARALLEL = {"phi", "falcon", "gptj", "cohere"}
_LAYER_NORM = {"phi", "falcon", "gpt_neox", "gptj", "gpt_bigcode", "gpt2", "stablelm", "bert", "roberta", "bloom"}


class ShapeError(ValueError):
    """A config.json field that cannot size a model: `field` names it, the message says why."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def _whole(config: dict[str, Any], *keys: str, required: bool = True, minimum: int = 1) -> int | None:
    """The first of `keys` that is set, checked to be a whole number >= minimum (bools and strings are not)."""
    for key in keys:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ShapeError(key, f"must be a whole number (got {value!r})")
        if value < minimum:
            raise ShapeError(key, f"must be at least {minimum} (got {value})")
        return value
    if required:
        raise ShapeError(keys[0], "missing field needed to size the model")
    return None


def shape_from_config(config: Any, name: str) -> ModelShape:
    """Read a transformers config.json (as parsed JSON). Raises ShapeError naming the first field it cannot use."""
    if not isinstance(config, dict):
        raise ShapeError("(top level)", f"must be a JSON object, not {type(config).__name__}")
    if "text_config" in config and "hidden_size" not in config:  # multimodal wrappers (Gemma-3, Llama-3.2-Vision)
        text = config["text_config"]
        if not isinstance(text, dict):
            raise ShapeError("text_config", f"must be a JSON object, not {type(text).__name__}")
        config = {**text, "model_type": text.get("model_type", "")}
    model_type = config.get("model_type", "")
    if not isinstance(model_type, str):
        raise ShapeError("model_type", f"must be a string (got {model_type!r})")

    hidden = _whole(config, "hidden_size", "n_embd", "n_embed", "d_model")
    heads = _whole(config, "num_attention_heads", "n_head")
    head_dim = _whole(config, "head_dim", required=False) or 0
    if not head_dim and hidden % heads:
        raise ShapeError("num_attention_heads", f"{heads} heads do not divide hidden size {hidden}; a config with "
                                                "another head size gives head_dim")
    kv_heads = _whole(config, "num_key_value_heads", "num_kv_heads", required=False) or (
        1 if config.get("multi_query") else heads)
    if model_type == "falcon" and not config.get("new_decoder_architecture") and not config.get("multi_query", True):
        kv_heads = heads
    if kv_heads > heads or heads % kv_heads:
        raise ShapeError("num_key_value_heads", f"{kv_heads} key/value heads must divide {heads} attention heads")
    intermediate = _whole(config, "intermediate_size", "n_inner", "ffn_hidden_size", required=False) or 4 * hidden
    experts = _whole(config, "num_local_experts", "num_experts", required=False, minimum=0) or 0
    if experts:
        intermediate = _whole(config, "moe_intermediate_size", required=False) or intermediate
    active = _whole(config, "num_experts_per_tok", required=False) or (2 if experts else 0)
    if experts and active > experts:
        raise ShapeError("num_experts_per_tok", f"{active} is more than the {experts} experts")
    positions = _whole(config, "n_positions", required=False, minimum=0) or 0
    max_positions = _whole(config, "max_position_embeddings", "n_positions", "seq_length", required=False,
                           minimum=0) or 0
    return ModelShape(
        name=name,
        hidden=hidden,
        layers=_whole(config, "num_hidden_layers", "n_layer", "num_layers"),
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vocab=_whole(config, "vocab_size"),
        head_dim=head_dim,
        tied=bool(config.get("tie_word_embeddings", model_type not in ("llama", "mistral", "mixtral"))),
        gated_mlp=model_type in _GATED or not model_type,
        experts=experts,
        active_experts=active,
        attn_bias=bool(config.get("attention_bias") or config.get("bias")
                       or model_type in ("qwen2", "phi", "bloom", "gpt_bigcode")),
        mlp_bias=bool(config.get("mlp_bias") or model_type in ("phi", "gpt_neox", "gpt_bigcode", "bert", "bloom")),
        layer_norm=model_type in _LAYER_NORM,
        norms_per_layer=4 if model_type in ("gemma2", "gemma3", "gemma3_text") else (
            1 if model_type in _PARALLEL and not config.get("new_decoder_architecture") else 2),
        qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2"),
        positions=positions if model_type in ("gpt_bigcode", "gpt2") else 0,
        max_positions=max_positions,
        alibi=model_type == "bloom" or bool(config.get("alibi")),
        embed_norm=model_type == "bloom",
    )
