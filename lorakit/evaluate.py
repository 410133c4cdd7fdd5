"""`lorakit eval`: did each stage help? Score the base model and each run on the same held-out data.

SFT-style data is scored by loss and perplexity on the tokens training would train (the same rendering and masks as
`lorakit sft`). Preference data is scored by DPO's implicit reward: reward accuracy and mean margin of a policy
against its reference, and the policy's own chosen-minus-rejected log-prob gap. Every candidate is compared with
its parent (dpo -> sft -> base; merged -> its run; GGUF export -> its merged model) so a regression stands out.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError, RunError
from lorakit.fsutil import write_json_atomic
from lorakit.runs import MANIFEST_FILE, read_run

EVAL_FILE = "eval.json"


class RegressionError(LorakitError):
    """A stage made the model worse and --fail-on-regression was given."""


@dataclass
class Candidate:
    name: str
    kind: str  # base | sft | dpo | merged | gguf
    path: Path | None
    parent: str | None  # name of the candidate it is compared with
    run: Any = None  # lorakit Run for adapter runs
    scores: dict[str, float] = field(default_factory=dict)
    generations: list[str] = field(default_factory=list)


def gguf_file_of(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        files = sorted(path.glob("*.gguf"))
        return files[0] if files else None
    return None


def describe(path: Path) -> Candidate:
    """What a path given to `lorakit eval` is, and which candidate it should be compared with."""
    gguf = gguf_file_of(path)
    if gguf is not None:
        manifest = _manifest(gguf.parent)
        parent = manifest.get("source")
        return Candidate(str(path), "gguf", gguf, str(parent) if parent else None)
    manifest = _manifest(path)
    stage = manifest.get("stage")
    if stage in ("sft", "dpo"):
        run = read_run(path)
        parent = (run.manifest.get("parent") or {}).get("path")
        return Candidate(str(path), stage, path, parent or "base", run=run)
    if stage == "merge" or (path / "config.json").is_file():
        parent = manifest.get("source") or (manifest.get("lineage") or [{}])[0].get("path")
        return Candidate(str(path), "merged", path, str(parent) if parent else None)
    raise RunError(f"{path} is not a run, merged model or GGUF export", hint="pass folders written by lorakit")


def _manifest(folder: Path) -> dict[str, Any]:
    file = folder / MANIFEST_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError:
        return {}


def load_candidate(candidate: Candidate, base_location: str | None):
    """(model, tokenizer) for one candidate, on the best device, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.infer import load_for_inference
    from lorakit.model import resolve_device, resolve_model_source, load_base_model

    if candidate.kind == "base":
        device = resolve_device()
        model = load_base_model(resolve_model_source(base_location), "lora", None,
                                "bf16" if device == "cuda" else "fp32", device)
        return model.eval(), None
    if candidate.kind == "gguf":
        folder, name = candidate.path.parent, candidate.path.name
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
        return model.eval(), tokenizer
    return load_for_inference(candidate.path)


def sft_scores(model, tokenizer, data_section, batch_size: int = 8) -> dict[str, float]:
    """Mean loss and perplexity over the trained tokens of the data, tokenized exactly as training does."""
    import torch

    from lorakit.data.sft import tokenize_source
    from lorakit.data.tokenize import IGNORE

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


def free(model) -> None:
    del model
    gc.collect()


def regressions(candidates: list[Candidate], metric: str, higher_is_better: bool,
                tolerance: float) -> list[dict[str, Any]]:
    """Each candidate against its parent; worse means worse by more than `tolerance` of the parent's value (at least
    of 1.0), so a q8_0 export's third-decimal loss change is not a regression."""
    by_name = {c.name: c for c in candidates}
    rows = []
    for candidate in candidates:
        parent = by_name.get(candidate.parent or "")
        if parent is None or metric not in candidate.scores or metric not in parent.scores:
            continue
        change = candidate.scores[metric] - parent.scores[metric]
        loss_of_quality = -change if higher_is_better else change
        worse = loss_of_quality > tolerance * max(abs(parent.scores[metric]), 1.0)
        rows.append({"candidate": candidate.name, "parent": parent.name, "metric": metric,
                     "value": candidate.scores[metric], "parent_value": parent.scores[metric],
                     "change": change, "worse": worse})
    return rows


KEEP_PREVIOUS = 20


def save_results(candidates: list[Candidate], report: dict[str, Any]) -> None:
    """eval.json is the latest report; earlier ones (other data, a --prompts-only look) stay under "previous"."""
    for candidate in candidates:
        if candidate.kind == "gguf" and candidate.path is not None:
            folder = candidate.path.parent
        elif candidate.kind in ("sft", "dpo", "merged") and candidate.path is not None and candidate.path.is_dir():
            folder = candidate.path
        else:
            continue
        previous: list[dict[str, Any]] = []
        try:
            earlier = json.loads((folder / EVAL_FILE).read_text())
            previous = [{k: v for k, v in earlier.items() if k != "previous"}, *earlier.get("previous", [])]
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or unreadable: start the history here
        write_json_atomic(folder / EVAL_FILE, {**report, "previous": previous[:KEEP_PREVIOUS]})


def read_prompts(values: list[str]) -> list[str]:
    prompts: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_file():
            prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            prompts.append(value)
    return prompts


KIND_ORDER = {"base": 0, "sft": 1, "dpo": 2, "merged": 3, "gguf": 4}  # parents before the candidates built on them


def collect_candidates(paths: list[Path], with_base: bool) -> list[Candidate]:
    """The candidates, each a DPO run's SFT parent added when it was not given (it is that run's reference), parents
    first."""
    from lorakit.console import info

    candidates = [describe(p) for p in paths]
    given = {str(c.path.resolve()) for c in candidates if c.path}
    for candidate in list(candidates):
        parent = candidate.parent
        if candidate.kind == "dpo" and parent not in (None, "base") and str(Path(parent).resolve()) not in given:
            if Path(parent).is_dir():
                info(f"Adding {parent}: the parent and reference of {candidate.name}")
                candidates.append(describe(Path(parent)))
                given.add(str(Path(parent).resolve()))
    for candidate in candidates:
        # Parents are matched by resolved path; "base" is the base model.
        if candidate.parent and candidate.parent != "base":
            candidate.parent = str(Path(candidate.parent).resolve())
        candidate.name = str(candidate.path.resolve()) if candidate.path else candidate.name
    if with_base:
        candidates.insert(0, Candidate("base", "base", None, None))
    return sorted(candidates, key=lambda c: KIND_ORDER[c.kind])


def base_location(candidates: list[Candidate], override: str | None) -> str | None:
    if override:
        return override
    from lorakit.infer import base_source_of

    for candidate in candidates:
        if candidate.run is not None:
            return base_source_of(candidate.run).location
    return None


def run_eval(paths: list[Path], data: str | None = None, prefs: str | None = None, prompts: list[str] | None = None,
             with_base: bool = True, base_model: str | None = None, max_new_tokens: int = 48,
             tolerance: float = 0.01) -> dict[str, Any]:
    from lorakit.config import DataSection
    from lorakit.console import err
    from lorakit.errors import ConfigError

    if not data and not prefs and not prompts:
        raise ConfigError("nothing to evaluate", hint="give --data (SFT-style), --prefs (preference pairs) or --prompts")
    candidates = collect_candidates(paths, with_base)
    location = base_location(candidates, base_model)
    if with_base and location is None:
        candidates = [c for c in candidates if c.kind != "base"]
    runs = [c.run for c in candidates if c.run is not None]
    reference_tokenizer = None
    if runs:
        from transformers import AutoTokenizer

        reference_tokenizer = AutoTokenizer.from_pretrained(str(runs[0].path))
    recipe_data = dict(runs[0].recipe.get("data", {})) if runs else {}
    prompt_list = read_prompts(prompts or [])
    for candidate in candidates:
        with err.status(f"Evaluating {candidate.name}..."):
            model, tokenizer = load_candidate(candidate, location)
            tokenizer = tokenizer or reference_tokenizer
            if tokenizer is None:
                raise ConfigError("no tokenizer to evaluate the base model with",
                                  hint="pass at least one run folder, or --no-base")
            if data:
                section = DataSection(**{**_sft_fields(recipe_data), "train": data})
                candidate.scores.update(sft_scores(model, tokenizer, section))
            if prefs:
                from lorakit.eval_prefs import preference_scores

                candidate.scores.update(preference_scores(candidate, model, tokenizer, prefs, candidates, location))
            if prompt_list:
                from lorakit.infer import generate_reply

                candidate.generations = [
                    generate_reply(model, tokenizer, [{"role": "user", "content": p}], max_new_tokens)
                    for p in prompt_list
                ]
            free(model)
    report: dict[str, Any] = {
        "candidates": [{"name": c.name, "kind": c.kind, "parent": c.parent, **c.scores} for c in candidates],
        "data": data,
        "prefs": prefs,
        "tolerance": tolerance,
        "regressions": [],
    }
    if data:
        report["regressions"] += regressions(candidates, "loss", False, tolerance)
    if prefs:
        # Reward accuracies are measured against different references (dpo vs sft, sft vs base), so they do not
        # compare across stages; the policy's own chosen-minus-rejected gap does.
        report["regressions"] += regressions(candidates, "logp_gap", True, tolerance)
    if prompt_list:
        report["generations"] = [{"prompt": p, **{c.name: c.generations[i] for c in candidates}}
                                 for i, p in enumerate(prompt_list)]
    save_results(candidates, report)
    return report


def _sft_fields(recipe_data: dict[str, Any]) -> dict[str, Any]:
    """The run's own data settings (masks, template use, length) minus where its training data lived."""
    keep = ("format", "columns", "system_prompt", "train_on", "max_length")
    return {k: recipe_data[k] for k in keep if k in recipe_data}
