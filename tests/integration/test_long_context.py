"""Long sequences: the tiled MLP computes what the untiled one does and keeps what the estimator says; a 4-bit base
in the compute dtype trains the same curve with half the residual stream."""

import contextlib

import pytest
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

from lorakit.model import choose_kbit_upcast, freeze_base, keep_4bit_layout_on_cpu
from lorakit.train.tiling import MARK, apply_tiled_mlp, remove_tiled_mlp, tiled, tiling_is_exact
from lorakit.vram.estimate import Setup, _activations_per_token, _layer_activations, _tiled_layer, estimate
from lorakit.vram.shapes import shape_from_config

from ..live_bytes import LiveBytes

CONFIG = dict(vocab_size=1000, hidden_size=64, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=False)


def lora_llama(dtype=torch.float32, dropout=0.0, checkpointing=False, **config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**CONFIG, **config}), dtype=dtype,
                                             attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear"))
    if checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def forward_backward(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.item(), grads


@pytest.mark.parametrize("checkpointing", [False, True])
def test_tiled_mlp_gives_the_untiled_logits_and_gradients(checkpointing):
    model = lora_llama(checkpointing=checkpointing)
    ids = torch.randint(0, 1000, (2, 300))
    logits, loss, grads = forward_backward(model, ids)
    assert apply_tiled_mlp(model, 64) == 2  # both decoder layers' MLPs, 5 tiles each (the last one short)
    tiled_logits, tiled_loss, tiled_grads = forward_backward(model, ids)
    assert torch.allclose(tiled_logits, logits, rtol=1e-5, atol=1e-6)
    assert tiled_loss == pytest.approx(loss, rel=1e-6)
    assert tiled_grads.keys() == grads.keys() and len(grads) == 28  # every LoRA matrix, none lost in the tiles
    for name, grad in grads.items():
        assert torch.allclose(tiled_grads[name], grad, rtol=1e-4, atol=1e-7), name
    remove_tiled_mlp(model)
    assert not any(getattr(m.forward, MARK, None) for m in model.modules() if hasattr(m, "forward"))


def test_tiles_replay_their_lora_dropout_masks_in_backward():
    """With LoRA dropout the tiles draw their masks tile by tile (the same distribution as one draw for the row, other
    samples), and every recompute must replay them: the gradients with the layers' own checkpointing on top equal
    those without it, draw for draw."""
    ids = torch.randint(0, 1000, (1, 300))
    grads = {}
    for checkpointing in (False, True):
        model = lora_llama(dropout=0.1, checkpointing=checkpointing)
        apply_tiled_mlp(model, 64)
        torch.manual_seed(7)
        grads[checkpointing] = forward_backward(model, ids)[2]
    for name, grad in grads[False].items():
        assert torch.allclose(grads[True][name], grad, rtol=1e-4, atol=1e-7), name


def test_tiles_leave_rows_shorter_than_a_tile_alone_and_the_probe_sees_a_non_token_function():
    model = lora_llama()
    assert tiling_is_exact(model)
    calls = []
    mlp = model.base_model.model.model.layers[0].mlp
    wrapped = tiled(lambda x: calls.append(x.shape[-2]) or mlp(x), 64)
    wrapped(torch.randn(1, 64, 64))
    wrapped(torch.randn(1, 130, 64))
    assert calls == [64, 64, 64, 2]
    # an MLP that mixes tokens (a mean over the sequence) is not tiled: the probe catches it
    mlp.forward = lambda x: x - x.mean(dim=-2, keepdim=True)
    assert not tiling_is_exact(model)


@pytest.mark.parametrize("dtype,dropout", [("fp32", 0.0), ("bf16", 0.05)])
def test_tiled_layer_keeps_what_the_estimator_counts(dtype, dropout):
    """Saved for backward at the end of the forward: every layer keeps everything but its MLP, plus the tiles' inputs
    (to the byte); at the backward peak the saving is at least the estimate's (one tile is recomputed at a time,
    and the untiled backward also holds full-length gradients of the intermediates the estimate does not count)."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = lora_llama(torch_dtype, dropout)
    seq, tile = 512, 128
    ids = torch.randint(0, 1000, (1, seq))
    kept, peaks = {}, {}
    for tiles in (False, True):
        if tiles:
            apply_tiled_mlp(model, tile)
        with LiveBytes() as live:
            logits = model(input_ids=ids).logits
            kept[tiles] = live.now
            logits.float().sum().backward()
            peaks[tiles] = live.peak
    shape = shape_from_config(LlamaConfig(**CONFIG).to_dict(), "tiny")
    setup = Setup(method="lora", dtype=dtype, seq_len=seq, lora_r=8, lora_dropout=dropout, device="cpu",
                  grad_checkpointing=False).resolved()
    per_token, _ = _tiled_layer(shape, setup, 1)
    untiled = _activations_per_token(shape, setup, seq)
    assert kept[False] - kept[True] == shape.layers * seq * (untiled - per_token)
    mlp_part = _layer_activations(shape, setup, seq)[1]
    assert peaks[False] - peaks[True] >= shape.layers * seq * (untiled - per_token) - tile * mlp_part


def test_estimator_counts_a_tiled_layer_where_it_runs_in_tiles():
    shape = shape_from_config(LlamaConfig(**{**CONFIG, "hidden_size": 512, "intermediate_size": 2048,
                                             "num_attention_heads": 8}).to_dict(), "small")
    base = Setup(method="lora", seq_len=16384, grad_checkpointing=True, loss="fused", lora_dropout=0.0)
    plain, tiles = estimate(shape, base), estimate(shape, Setup(**{**base.__dict__, "tiled_mlp": True}))
    saved = plain.term("activations_recompute") - tiles.term("activations_recompute")
    rest, mlp = _layer_activations(shape, base.resolved(), 16384)
    # the row keeps everything but the MLP, plus the tiles' inputs; one tile of 1024 tokens holds the MLP's part
    assert saved == 16384 * (mlp - shape.hidden * 2) - 1024 * mlp
    assert tiles.term("activations_checkpoints") == plain.term("activations_checkpoints")
    short = Setup(**{**base.__dict__, "tiled_mlp": True, "seq_len": 1024})
    assert estimate(shape, short).total == estimate(shape, Setup(**{**short.__dict__, "tiled_mlp": False})).total


# -- QLoRA in the compute dtype --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kbit") / "llama"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**{**CONFIG, "hidden_size": 128, "intermediate_size": 384}),
                                     dtype=torch.bfloat16).save_pretrained(folder)
    return folder


def kbit_policy(folder, upcast: bool, dtype=torch.bfloat16):
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                               bnb_4bit_use_double_quant=True)
    model = keep_4bit_layout_on_cpu(AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quant, dtype=dtype, device_map="cpu", attn_implementation="sdpa"))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False) if upcast else freeze_base(model)
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    for param in model.parameters():  # TRL >= 1 trains a 4-bit model's adapters in bf16
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
    model.train()
    return model


def layer_inputs_and_saved(model, ids):
    """Bytes each decoder layer's input takes (the residual stream) and bytes autograd saves inside layer 1."""
    layers = model.base_model.model.model.layers
    inputs, saved, where, seen = {}, {}, ["outside"], set()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    hooks = [layer.register_forward_pre_hook(
        lambda m, args, kwargs, i=i: (where.__setitem__(0, i), inputs.__setitem__(i, args[0] if args else
                                                                                    kwargs["hidden_states"]))
        and None, with_kwargs=True) for i, layer in enumerate(layers)]
    hooks += [layer.register_forward_hook(lambda m, a, o: where.__setitem__(0, "outside")) for layer in layers]

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in params and pointer not in seen:
            seen.add(pointer)
            saved[where[0]] = saved.get(where[0], 0) + tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    for hook in hooks:
        hook.remove()
    return inputs[1].dtype, inputs[1].element_size(), saved[1]


@pytest.mark.slow  # real 4-bit forward/backward passes through bitsandbytes and PEFT
def test_qlora_in_the_compute_dtype_halves_the_residual_stream(bf16_llama, monkeypatch):
    # PEFT's 4-bit LoRA layer asks torch.is_autocast_enabled() (CUDA's) whether to cast; let it see the CPU's
    original = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args: original(*args) if args else original("cpu"))
    ids = torch.randint(0, 1000, (2, 64))
    upcast_dtype, upcast_bytes, upcast_saved = layer_inputs_and_saved(kbit_policy(bf16_llama, True), ids)
    plain_dtype, plain_bytes, plain_saved = layer_inputs_and_saved(kbit_policy(bf16_llama, False), ids)
    assert (upcast_dtype, plain_dtype) == (torch.float32, torch.bfloat16)
    assert plain_bytes * 2 == upcast_bytes  # the checkpointed layer inputs: exactly half
    shape = shape_from_config(LlamaConfig(**{**CONFIG, "hidden_size": 128, "intermediate_size": 384}).to_dict(), "t")
    setups = {upcast: Setup(method="qlora", dtype="bf16", seq_len=64, lora_r=8, lora_dropout=0.0, device="cpu",
                            autocast=True, mixed_precision=False, upcast_non_quantized=upcast).resolved()
              for upcast in ("all", "auto")}
    # every saved tensor of a layer, to the byte, in the estimator; q/k/v and the MLP intermediates halve with the
    # residual stream, RMSNorm's fp32 copy of its input does not (the norm statistics stay fp32)
    assert upcast_saved == _activations_per_token(shape, setups["all"], 64) * 128
    assert plain_saved == _activations_per_token(shape, setups["auto"], 64) * 128
    assert plain_saved < 0.75 * upcast_saved


def sgd_losses(model, batches, autocast=True):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    region = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    losses = []
    for ids in batches:
        with region:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.slow  # real 4-bit training steps through bitsandbytes and PEFT
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_qlora_in_the_compute_dtype_trains_the_same_curve(bf16_llama, dtype):
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 1000, (2, 32), generator=generator)] * 6  # one batch, learnt by heart
    upcast = sgd_losses(kbit_policy(bf16_llama, True, torch_dtype), batches, autocast=dtype == "bf16")
    plain = sgd_losses(kbit_policy(bf16_llama, False, torch_dtype), batches, autocast=dtype == "bf16")
    assert upcast[-1] < upcast[0] - 0.3  # it learns
    if dtype == "fp32":
        assert plain == upcast  # nothing to upcast: the very same arithmetic
    else:  # bf16 rounding of the residual stream only: the curves agree to a few parts in a thousand
        assert plain == pytest.approx(upcast, rel=1e-2)


def test_kbit_upcast_choice_follows_the_compute_dtype():
    assert choose_kbit_upcast("auto", "bf16")[0] is False
    assert choose_kbit_upcast("auto", "fp16")[0] is True  # fp16's range: keep PEFT's fp32 residual stream
    assert choose_kbit_upcast("auto", "fp32")[0] is False
    assert choose_kbit_upcast(True, "bf16")[0] is True and choose_kbit_upcast(False, "fp16")[0] is False
