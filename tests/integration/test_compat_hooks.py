"""The hooks that need a real model: TRL's 'ref' adapter naming and bitsandbytes' CPU kernel switch (no training)."""

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
