"""The hooks that need a real model: TRL's 'ref' adapter naming, bitsandbytes' CPU kernel switch and the quantizer
transformers attaches to GGUF-loaded models (no training)."""

import pytest
import torch

from lorakit import compat


def test_trl_names_its_reference_adapter_like_the_policy(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from lorakit.train.dpo import make_dpo_trainer_class

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    import datasets

    rows = datasets.Dataset.from_dict({"prompt_ids": [[1, 2]], "chosen_ids": [[3]], "rejected_ids": [[4]]})
    trainer = make_dpo_trainer_class()(model=model, args=DPOConfig(output_dir=str(tmp_path), use_cpu=True,
                                                                   report_to="none"),
                                       train_dataset=rows, processing_class=tokenizer)
    pairs = list(compat.reference_adapter_pairs(trainer.model))
    assert len(pairs) == 2 * model.config.num_hidden_layers  # lora_A and lora_B of each q_proj
    assert all(torch.equal(ref, policy) for ref, policy in pairs)


def test_the_4bit_cpu_kernel_switch_exists_on_real_bitsandbytes_layers():
    bnb = pytest.importorskip("bitsandbytes")

    layer = bnb.nn.Linear4bit(64, 64, quant_type="nf4")
    model = torch.nn.Sequential(layer)
    compat.keep_4bit_training_kernel(model)
    assert layer.support_avx512bf16_for_cpu is False


def test_a_gguf_loaded_model_saves_only_once_its_gguf_quantizer_is_dropped(tiny_llama, tmp_path):
    from importlib.metadata import version

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.export.gguf_export import write_gguf

    write_gguf(tiny_llama, tmp_path / "tiny.gguf", "f16", AutoTokenizer.from_pretrained(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    if getattr(model, "hf_quantizer", None) is not None:  # transformers 5.24 (5.20-5.23 attach none)
        with pytest.raises(ValueError, match="not serializable"):
            model.save_pretrained(tmp_path / "before")
    else:
        assert version("transformers") < "5.24"
    compat.drop_gguf_quantizer(model)
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert getattr(reloaded.config, "quantization_config", None) is None
    assert torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
