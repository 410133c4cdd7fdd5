"""What each path given to `lorakit eval` is (base, sft, dpo, merged, gguf), its parent, and how it loads."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.compat import route_gguf_loading_bar
from lorakit.console import info
from lorakit.errors import RunError
from lorakit.gguf_source import import_tokenizer
from lorakit.infer import load_for_inference
from lorakit.model import base_source_of, load_base_model, resolve_device, resolve_model_source
from lorakit.outputs import open_output, read_run
from lorakit.outputs.integrity import check_adapter, check_gguf

KIND_ORDER = {"base": 0, "sft": 1, "dpo": 2, "merged": 3, "gguf": 4}  # parents before the candidates built on them


@dataclass
class Candidate:
    name: str
    kind: str  # base | sft | dpo | merged | gguf
    path: Path | None
    parent: str | None  # name of the candidate it is compared with
    run: Any = None  # lorakit Run for adapter runs
    scores: dict[str, float] = field(default_factory=dict)
    generations: list[str] = field(default_factory=list)
    benchmarks: dict[str, Any] = field(default_factory=dict)  # lm-eval results per task (lorakit.eval.benchmarks)


def describe(path: Path) -> Candidate:
    """What a path given to `lorakit eval` is, and which candidate it should be compared with."""
    output = open_output(path)  # refuses an output another command is still writing
    if output.gguf is not None and not output.looks_like_run:
        gguf = output.gguf
        check_gguf(gguf.parent, gguf.name, f"export {gguf.parent}")  # a cut file fails in transformers' struct reads
        parent = output.parent
        return Candidate(str(path), "gguf", gguf, str(parent) if parent else None)
    if output.is_training_run or output.has_recipe:  # a run, whole or damaged (read_run names it)
        run = read_run(path)
        # a diverged run (NaN or inf in its weights) would be scored as if it were a model
        check_adapter(path, f"run {path}", finite=True)
        return Candidate(str(path), run.stage, path, str(run.parent_path) if run.parent_path else "base", run=run)
    if output.kind == "merged" or (path / "config.json").is_file():
        parent = output.parent
        return Candidate(str(path), "merged", path, str(parent) if parent else None)
    raise RunError(f"{path} is not a run, merged model or GGUF export", hint="pass folders written by lorakit")


def load_candidate(candidate: Candidate, base_location: str | None):
    """(model, tokenizer) for one candidate, on the best device, in eval mode."""
    from transformers import AutoModelForCausalLM

    if candidate.kind == "base":
        device = resolve_device()
        model = load_base_model(resolve_model_source(base_location), "lora", None,
                                "bf16" if device == "cuda" else "fp32", device)
        return model.eval(), None
    if candidate.kind == "gguf":
        folder, name = candidate.path.parent, candidate.path.name
        route_gguf_loading_bar()
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name)
        source = Path(candidate.parent) if candidate.parent else None
        if source is not None and (source / "tokenizer_config.json").is_file():
            # a lorakit export: score it with the tokenizer it was trained and merged with, so the comparison with
            # its source measures the weights. The file's add_bos flag is written for llama.cpp's chat path (no BOS
            # a ChatML run never saw) and would otherwise drop the BOS plain-text benchmarks put in front.
            from transformers import AutoTokenizer

            return model.eval(), AutoTokenizer.from_pretrained(str(source))
        with tempfile.TemporaryDirectory() as unpacked:  # a foreign GGUF: its tokenizer as llama.cpp cuts text
            tokenizer, _ = import_tokenizer(candidate.path, Path(unpacked))
        return model.eval(), tokenizer
    return load_for_inference(candidate.path)


def collect_candidates(paths: list[Path], with_base: bool) -> list[Candidate]:
    """The candidates, each a DPO run's SFT parent added when it was not given (it is that run's reference), parents
    first."""
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
    for candidate in candidates:
        if candidate.run is not None:
            return base_source_of(candidate.run).location
    return None
