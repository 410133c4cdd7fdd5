"""The estimator's terms against what can be measured exactly on the CPU: real tensors of tiny models."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

from lorakit.vram.estimate import Setup, _activations_per_token, estimate
from lorakit.vram.shapes import shape_from_config

CONFIG = dict(vocab_size=1000, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=False)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def tiny_shape(config):
    return shape_from_config(config.to_dict(), "tiny")


def storage_bytes(tensor):
    return tensor.untyped_storage().nbytes()


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vram") / "llama"
    config = LlamaConfig(**{**CONFIG, "hidden_size": 256, "intermediate_size": 704})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    return folder, config


def test_bf16_weight_bytes_are_exact(saved_llama):
    folder, config = saved_llama
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    measured = sum(p.numel() * p.element_size() for p in model.parameters())
    est = estimate(tiny_shape(config), Setup(method="lora", stage="inference", seq_len=1))
    assert est.term("base_weights") == measured


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_weight_bytes_are_exact_including_quantization_state(saved_llama, double_quant):
    folder, config = saved_llama
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map="cpu")
    measured = 0
    for param in model.parameters():
        measured += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        if state is not None:
            measured += sum(storage_bytes(t) for t in (state.absmax, state.code))
            if state.nested:
                measured += sum(storage_bytes(t) for t in (state.state2.absmax, state.state2.code, state.offset))
    est = estimate(tiny_shape(config), Setup(method="qlora", double_quant=double_quant, upcast_non_quantized=False,
                                             stage="inference", seq_len=1))
    assert est.term("base_weights") + est.term("other_weights") == measured


def saved_bytes_per_layer(model, layers, ids, checkpointing):
    """Bytes autograd saves for backward inside each decoder layer (unique storages, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    where = ["outside"]
    seen, per_layer = set(), {}
    hooks = []
    for index, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, i=index: where.__setitem__(0, i)))
        hooks.append(layer.register_forward_hook(lambda m, a, o: where.__setitem__(0, "outside")))

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in params and pointer not in seen:
            seen.add(pointer)
            per_layer[where[0]] = per_layer.get(where[0], 0) + storage_bytes(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    for hook in hooks:
        hook.remove()
    return per_layer


def lora_model(dtype, attn, dropout, targets, checkpointing):
    config = LlamaConfig(**CONFIG)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], attn_implementation=attn)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=targets))
    if checkpointing:
        model.enable_input_require_grads()
        # reentrant checkpointing saves the layer input through autograd, where the hook can count it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    return config, model


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("dropout,targets", [(0.0, "all-linear"), (0.05, "all-linear"), (0.05, ["q_proj", "v_proj"])])
def test_activation_bytes_per_layer_match_saved_tensors(dtype, attn, dropout, targets):
    config, model = lora_model(dtype, attn, dropout, targets, checkpointing=False)
    batch, seq = 2, 64
    ids = torch.randint(0, 1000, (batch, seq))
    measured = saved_bytes_per_layer(model, model.base_model.model.model.layers, ids, False)
    setup = Setup(method="lora", dtype=dtype, seq_len=seq, lora_r=8, attn=attn, lora_dropout=dropout, device="cpu",
                  lora_targets="all-linear" if targets == "all-linear" else "q,v").resolved()
    predicted = _activations_per_token(tiny_shape(config), setup, seq) * batch * seq
    # layer 1: layer 0's input norm saves the embedding output, which is counted with the embeddings
    assert predicted == pytest.approx(measured[1], rel=0.01)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_checkpointing_keeps_one_hidden_state_per_layer(dtype):
    config, model = lora_model(dtype, "sdpa", 0.05, "all-linear", checkpointing=True)
    batch, seq = 2, 64
    ids = torch.randint(0, 1000, (batch, seq))
    layers = model.base_model.model.model.layers
    saved = saved_bytes_per_layer(model, layers, ids, True)
    _, plain = lora_model(dtype, "sdpa", 0.05, "all-linear", checkpointing=False)
    full = saved_bytes_per_layer(plain, plain.base_model.model.model.layers, ids, False)
    est = estimate(tiny_shape(config), Setup(method="lora", dtype=dtype, seq_len=seq, batch_size=batch, device="cpu",
                                             grad_checkpointing=True, mixed_precision=True))
    kept = est.term("activations_checkpoints")
    # during forward each checkpointed layer keeps only its input hidden state
    assert kept == saved[0] + saved[1]
    assert saved[1] == batch * seq * config.hidden_size * DTYPES[dtype].itemsize
    assert kept < 0.1 * (full[0] + full[1])


@pytest.mark.slow  # one real optimizer step
def test_lora_optimizer_and_gradient_bytes_after_a_real_step():
    config, model = lora_model("bf16", "sdpa", 0.05, "all-linear", checkpointing=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, 1000, (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    trainable = [p for p in model.parameters() if p.requires_grad]
    lora_bytes = sum(p.numel() * p.element_size() for p in trainable)
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    state_bytes = sum(storage_bytes(v) for state in optimizer.state.values() for k, v in state.items()
                      if k in ("exp_avg", "exp_avg_sq"))
    est = estimate(tiny_shape(config), Setup(method="lora", dtype="bf16", optimizer="adamw", lora_r=8, device="cpu"))
    assert est.term("lora_weights") == lora_bytes  # PEFT keeps adapters in fp32 on a bf16 base
    assert est.term("gradients_step") == grad_bytes
    assert est.term("optimizer_states") == state_bytes


def test_sft_records_the_preflight_estimate(sft_run):
    import json

    from lorakit.vram.estimate import GIB
    from lorakit.vram.resolve import resolve_shape, setup_from_recipe
    from lorakit.config import load_recipe

    manifest = json.loads((sft_run.path / "manifest.json").read_text())
    recorded = manifest["vram_estimate"]
    recipe = load_recipe("sft", sft_run.path / "lorakit.yaml")
    name, setup = setup_from_recipe(recipe)
    expected = estimate(resolve_shape(manifest["base_model"]["location"]), setup)
    assert recorded["estimate_total_gib"] == pytest.approx(expected.total / GIB, abs=1e-3)
    first = json.loads((sft_run.path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["estimate_total_gib"] == recorded["estimate_total_gib"]
