"""The estimator's terms against what can be measured exactly on the CPU: real tensors of tiny models.

Activation bytes are the tensors autograd keeps for backward, counted with `saved_tensors_hooks` in a real
forward/backward through transformers, PEFT and bitsandbytes (4-bit layers run the same Python path on the CPU as on
CUDA). Peaks are live tensor storages tracked by a TorchDispatchMode.
"""

import contextlib
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

from lorakit.vram.estimate import Setup, _activations_per_token, _bnb_inputs_per_token, _lora_casts_per_layer, estimate
from lorakit.vram.shapes import shape_from_config

from ..live_bytes import LiveBytes

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

    from lorakit.config import load_recipe
    from lorakit.vram.estimate import GIB
    from lorakit.vram.resolve import resolve_shape, setup_from_recipe

    manifest = json.loads((sft_run.path / "manifest.json").read_text())
    recorded = manifest["vram_estimate"]
    recipe = load_recipe("sft", sft_run.path / "lorakit.yaml")
    name, setup = setup_from_recipe(recipe)
    expected = estimate(resolve_shape(manifest["base_model"]["location"]), setup)
    assert recorded["estimate_total_gib"] == pytest.approx(expected.total / GIB, abs=1e-3)
    first = json.loads((sft_run.path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["estimate_total_gib"] == recorded["estimate_total_gib"]


# -- QLoRA: the dtype of every saved tensor (PEFT's fp32 upcast, autocast, 4-bit layers' output dtype) ---------------

@pytest.fixture
def cuda_autocast_view(monkeypatch):
    """PEFT's 4-bit LoRA layer asks torch.is_autocast_enabled() -- CUDA's autocast -- whether to cast its input.
    These tests run CPU autocast; make the no-argument query see it, as the layer sees CUDA's on a GPU."""
    original = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args: original(*args) if args else original("cpu"))


def kbit_model(folder, method, upcast, dropout, targets, attn, adapters="fp32"):
    if method == "qlora":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map="cpu", attn_implementation=attn)
        from lorakit.model import keep_4bit_layout_on_cpu

        keep_4bit_layout_on_cpu(model)
        if upcast != "none":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if upcast == "norms":  # TRL < 0.20's peft_module_casting_to_bf16: embeddings and head back to bf16
            for name, module in model.named_modules():
                if any(key in name for key in ("lm_head", "embed_tokens")) and getattr(module, "weight", None) is not None:
                    module.to(torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation=attn)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=targets))
    if adapters == "bf16":  # TRL >= 1 casts a 4-bit model's trainable LoRA weights to bf16 (lorakit's QLoRA path)
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    model.train()
    return model


# (method, fp32 upcast, autocast, adapter dtype); the first QLoRA flow is lorakit's own (PEFT prepare + TRL >= 1)
FLOWS = [("qlora", "all", True, "bf16"), ("lora", "none", True, "fp32"), ("lora", "none", False, "fp32"),
         ("qlora", "all", True, "fp32"), ("qlora", "all", False, "fp32"), ("qlora", "norms", True, "fp32"),
         ("qlora", "none", True, "fp32"), ("qlora", "none", False, "fp32")]


@pytest.mark.slow  # real forward/backward passes through transformers, PEFT and bitsandbytes
@pytest.mark.parametrize("method,upcast,autocast,adapters", FLOWS)
@pytest.mark.parametrize("dropout,targets,attn", [(0.05, "all-linear", "sdpa"), (0.0, ["q_proj", "v_proj"], "eager")])
def test_lora_and_qlora_activation_bytes_follow_each_tensors_dtype(saved_llama, cuda_autocast_view, method, upcast,
                                                                   autocast, adapters, dropout, targets, attn):
    folder, config = saved_llama
    model = kbit_model(folder, method, upcast, dropout, targets, attn, adapters)
    batch, seq = 2, 64
    ids = torch.randint(0, 1000, (batch, seq))
    region = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with region:
        measured = saved_bytes_per_layer(model, model.base_model.model.model.layers, ids, False)
    setup = Setup(method=method, dtype="bf16", seq_len=seq, lora_r=8, attn=attn, lora_dropout=dropout, device="cpu",
                  autocast=autocast, upcast_non_quantized=upcast, mixed_precision=adapters == "fp32",
                  lora_targets="all-linear" if targets == "all-linear" else "q,v").resolved()
    shape = tiny_shape(config)
    predicted = _activations_per_token(shape, setup, seq) * batch * seq + _lora_casts_per_layer(shape, setup)
    assert predicted == measured[1]


@pytest.mark.slow  # real forward/backward passes through transformers, PEFT and bitsandbytes
def test_prepare_for_kbit_training_makes_qlora_activations_larger_than_lora(saved_llama, cuda_autocast_view):
    """The fp32 residual stream after PEFT's upcast: QLoRA keeps more activation bytes than 16-bit LoRA."""
    folder, _ = saved_llama
    ids = torch.randint(0, 1000, (2, 64))
    sizes = {}
    for method, upcast in (("lora", "none"), ("qlora", "all"), ("qlora", "none")):
        model = kbit_model(folder, method, upcast, 0.05, "all-linear", "sdpa")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sizes[method, upcast] = saved_bytes_per_layer(model, model.base_model.model.model.layers, ids, False)[1]
    assert sizes["qlora", "all"] > 1.15 * sizes["lora", "none"]
    # without the upcast it is smaller: under autocast PEFT's 4-bit LoRA layer skips the fp32 input cast that its
    # 16-bit layer makes before dropout
    assert sizes["qlora", "none"] < sizes["lora", "none"]


# -- bitsandbytes < 0.43.2: 4-bit inputs kept on ctx outlive the step in a loop that keeps the loss ----------------

def keep_inputs_on_ctx(monkeypatch):
    """bitsandbytes < 0.43.2's MatMul4Bit kept its input on ctx (`ctx.tensors = (A, B)`, removed by bitsandbytes
    PR 1270): restore that one line on top of the installed version."""
    from bitsandbytes.autograd._functions import MatMul4Bit

    forward = MatMul4Bit.forward

    def keep_input(ctx, A, B, out=None, bias=None, quant_state=None):
        output = forward(ctx, A, B, out, bias, quant_state)
        if any(ctx.needs_input_grad[:2]):
            ctx.tensors = (A, ctx.tensors[1])
        return output

    monkeypatch.setattr(MatMul4Bit, "forward", staticmethod(keep_input))


def _bytes_alive_after_steps(folder, steps=2):
    model = kbit_model(folder, "qlora", "none", 0.0, ["q_proj", "v_proj"], "sdpa")
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 64))
    with LiveBytes() as live:
        for _ in range(steps):
            loss = model(input_ids=ids, labels=ids).loss  # a loop that keeps `loss` until the next step rebinds it
            loss.backward()
        return live.now


@pytest.mark.slow  # real forward/backward passes through transformers, PEFT and bitsandbytes
def test_legacy_bitsandbytes_inputs_outlive_the_step(saved_llama, monkeypatch):
    folder, config = saved_llama
    current = _bytes_alive_after_steps(folder)
    keep_inputs_on_ctx(monkeypatch)
    legacy = _bytes_alive_after_steps(folder)
    shape = tiny_shape(config)
    setup = Setup(method="qlora", seq_len=64, batch_size=2, upcast_non_quantized=False, autocast=False,
                  bnb_saves_inputs=True, device="cpu").resolved()
    # layer 0's q/k/v read the frozen embeddings' output, which needs no gradient, so bitsandbytes keeps nothing
    first_layer_qkv = config.hidden_size * 2
    assert legacy - current == (shape.layers * _bnb_inputs_per_token(shape, setup) - first_layer_qkv) * 2 * 64
    est = estimate(shape, replace(setup, bnb_inputs_outlive_step=True))
    assert est.term("bnb_previous_inputs") == shape.layers * _bnb_inputs_per_token(shape, setup) * 2 * 64


@pytest.mark.slow  # real forward/backward passes through transformers, PEFT and bitsandbytes
def test_plain_cross_entropy_peak_matches_the_logits_term():
    """~14 bytes per token per vocabulary entry at the loss's backward peak (logits, fp32 copy, log-softmax and two
    fp32 gradients), measured as live bytes on a model whose vocabulary dominates."""
    config = LlamaConfig(**{**CONFIG, "vocab_size": 32000})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    ids = torch.randint(0, 32000, (2, 64))
    with LiveBytes() as live, torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    est = estimate(tiny_shape(config), Setup(method="lora", seq_len=64, batch_size=2, grad_checkpointing=False,
                                             loss="plain", device="cpu", autocast=True, lora_dropout=0.0,
                                             optimizer="sgd"))
    # forward/backward terms vs the live peak above the weights (LoRA gradients are the small remainder)
    assert est.phase("forward/backward") == pytest.approx(live.peak, rel=0.03)


@pytest.mark.slow
def test_gpu_check_dry_run_goes_through_lorakit_and_plain_trl(tmp_path, capsys):
    """bench/gpu_check.py --dry-run: tiny shapes on the CPU through the same code path as the GPU grid (random model
    built locally, lorakit's public run_sft/run_dpo, the plain-TRL side, the estimate, the table's columns)."""
    import json

    from bench.gpu_check import COLUMNS, main

    report = tmp_path / "gpu_check.json"
    assert main(["--dry-run", "--json", str(report), "--workdir", str(tmp_path / "work")]) == 0
    printed = capsys.readouterr().out
    assert all(column.strip() in printed for column in COLUMNS)
    results = json.loads(report.read_text())["results"]
    assert {r["case"]["stage"] for r in results} == {"sft", "dpo"}
    for r in results:
        assert not r["error"] and r["estimate_allocated_gib"] > 0 and r["tokens_per_s"] > 0
        assert r["optimizer"] and r["attention"] and r["head"]
        assert r["measured_allocated_gib"] is None  # no CUDA counters on the CPU
    assert any(r["trl_tokens_per_s"] for r in results)
    # the GPU path's options are reported from each run's manifest; on the CPU asking for Liger changes nothing
    assert any(r["case"]["liger"] is True for r in results)
    assert all(r["liger"] is False and r["compile"] is False for r in results)
    # long context: a tiled row, its Unsloth side (a labelled stand-in on the CPU) and the max-context search per side
    payload = json.loads(report.read_text())
    tiled = [r for r in results if r["case"]["tiled"]]
    assert tiled and all(r["tiled_mlp"] is True for r in tiled)
    assert all(r["unsloth"]["ran"].startswith("stand-in") and r["unsloth"]["tokens_per_s"] > 0 for r in tiled)
    searched = {row["side"]: row for row in payload["max_context"]}
    assert set(searched) == {"lorakit", "trl", "unsloth"}
    assert all(row["max_context"] == 256 and row["tries"] for row in searched.values())
