"""Loss and perplexity on SFT-style data, over exactly the tokens training would train (same template and masks)."""

from __future__ import annotations

import math

from lorakit.data.sft import tokenize_source
from lorakit.data.tokenize import IGNORE


def sft_scores(model, tokenizer, data_section, batch_size: int = 8) -> dict[str, float]:
    """Mean loss and perplexity over the trained tokens of the data, tokenized exactly as training does."""
    import torch

    tokenized, _, _, _ = tokenize_source(data_section.train, data_section, tokenizer)
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    rows = list(zip(tokenized["input_ids"], tokenized["labels"]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start: start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in chunk], device=device)
            labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in chunk], device=device)
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk], device=device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                     ignore_index=IGNORE, reduction="sum")
            total_loss += loss.item()
            total_tokens += int((target != IGNORE).sum())
    mean = total_loss / max(total_tokens, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "tokens": total_tokens}
