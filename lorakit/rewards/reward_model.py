"""A reward model as a reward: a folder holding a sequence-classification model with one output (a TRL RewardTrainer
run, or any `*ForSequenceClassification` checkpoint). The score of a completion is the model's logit on the prompt and
completion, rendered with the reward model's own chat template, as TRL's GRPOTrainer scores a model reward.

The folder is checked before anything loads (a config naming a sequence-classification architecture with one label,
safetensors weights); its code is never run (trust_remote_code off) and no pickle is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.errors import RewardError
from lorakit.io import read_json
from lorakit.rewards.builtin import reply_text


def is_reward_model_folder(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def check_reward_model(folder: Path) -> None:
    """What loading would trip over, said before any weights load."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise RewardError(f"reward {folder}: no config.json: not a model folder",
                          hint="name a built-in reward, FILE.py:FUNCTION, or a folder holding a reward model")
    config = read_json(config_file, RewardError)
    if not isinstance(config, dict):
        raise RewardError(f"reward {folder}: config.json is not a JSON object", hint="check the folder")
    architectures = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in architectures):
        raise RewardError(f"reward {folder}: {', '.join(map(str, architectures)) or 'the model'} is not a "
                          "sequence-classification model", hint="a reward model scores text with one logit "
                          "(AutoModelForSequenceClassification with num_labels=1, as TRL's RewardTrainer writes)")
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
    if labels != 1:
        raise RewardError(f"reward {folder}: the model has {labels} labels; a reward model has one",
                          hint="train it with num_labels=1 (TRL's RewardTrainer does)")
    if not list(folder.glob("*.safetensors")):
        raise RewardError(f"reward {folder}: no .safetensors weights (lorakit does not load pickled weights)",
                          hint="save the reward model with safe_serialization=True")


class RewardModelScore:
    """Scores (prompt, completion) pairs with a reward model; called like a TRL reward function."""

    def __init__(self, folder: Path, device: str = "cpu", batch_size: int = 16):
        self.folder = folder
        self.__name__ = folder.name  # the metric name: rewards/<folder>/mean
        self.device = device
        self.batch_size = batch_size
        self.model = None
        self.tokenizer = None

    def load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), trust_remote_code=False)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(self.folder), num_labels=1, use_safetensors=True, trust_remote_code=False).to(self.device).eval()
        except Exception as exc:  # transformers' own loading errors, by message
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise RewardError(f"reward {self.folder}: cannot load the reward model ({first})",
                              hint="check the folder: config.json, tokenizer files and safetensors weights") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the score is read at the last non-padding token, which the model finds through its pad id
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def texts(self, prompts: list, completions: list) -> list[str]:
        texts = []
        for prompt, completion in zip(prompts, completions):
            if isinstance(prompt, list) and getattr(self.tokenizer, "chat_template", None):
                reply = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
                texts.append(self.tokenizer.apply_chat_template(prompt + reply, tokenize=False))
            else:
                prompt_text = prompt if isinstance(prompt, str) else "\n".join(
                    str(m.get("content", "")) for m in prompt if isinstance(m, dict))
                texts.append(prompt_text + reply_text(completion))
        return texts

    def __call__(self, prompts: list, completions: list, **_: Any) -> list[float]:
        import torch

        if self.model is None:
            self.load()
        scores: list[float] = []
        texts = self.texts(prompts, completions)
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   padding_side="right", add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores
