"""Prove a GGUF file matches the model it came from, in the runtimes that read it.

- transformers' GGUF reader (`from_pretrained(dir, gguf_file=...)`, every type dequantized), for the architectures
  it knows: logits (KL, top-1, max logit difference, perplexity) and every weight against the source's;
- llama.cpp itself (llama-cpp-python, the lorakit[llama-cpp] extra) when installed: its logits on the same chats,
  and its tokenization of them;
- the tokenizer transformers rebuilds from the file (as lorakit unpacks a GGUF), on the same chats.
The first reader that can is the one the tolerances judge (transformers, else llama.cpp); an architecture neither
can read is refused before any work unless --no-verify.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from lorakit.compat import gguf_loadable_architectures
from lorakit.errors import ResourceError
from lorakit.export.gguf_export import gguf_architecture, native_output_captured
from lorakit.export.logit_gap import compare_logits, logits_for
from lorakit.export.verify import compare_models, tokenization_matches
from lorakit.gguf_source import import_tokenizer


def has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def transformers_reads(gguf_arch: str) -> bool:
    """Whether transformers' GGUF reader maps this general.architecture to a model (its own spellings differ)."""

    loadable = set(gguf_loadable_architectures())
    spelled = re.sub(r"^(qwen\d)moe$", r"\1_moe", gguf_arch.replace("-", "_"))
    return gguf_arch in loadable or spelled in loadable


def experts_under_llama(path: Path, arch: str) -> bool:
    """Mixtral is written as architecture 'llama' with expert tensors, which transformers' reader would load as a dense
    Llama without a word (KL 0.24 on a tiny Mixtral): only llama.cpp reads it right."""
    import gguf

    return arch == "llama" and "llama.expert_count" in gguf.GGUFReader(path).fields


def check_verifiable(gguf_arch: str, hf_arch: str) -> None:
    """Before any work: some runtime here must be able to load the export, or verification cannot happen."""
    if transformers_reads(gguf_arch) or has_llama_cpp():
        return
    raise ResourceError(f"{hf_arch} exports as GGUF architecture '{gguf_arch}', which transformers' GGUF reader "
                        "cannot load, and llama-cpp-python is not installed: the export could not be verified",
                        hint="pip install 'lorakit[llama-cpp]' (verifies in llama.cpp itself), or pass --no-verify")


def weight_errors(exported, source: Path) -> dict[str, Any]:
    """Relative RMS error of every weight transformers read back from the GGUF against the source's."""
    from safetensors import safe_open

    params = dict(exported.named_parameters())
    worst, worst_name, compared = 0.0, "", 0
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key not in params or tuple(params[key].shape) != tuple(handle.get_slice(key).get_shape()):
                    continue  # tied weights, buffers, or a layout the reader regroups
                want = handle.get_tensor(key).float()
                got = params[key].detach().float()
                error = float((got - want).pow(2).mean().sqrt() / (want.pow(2).mean().sqrt() + 1e-12))
                compared += 1
                if error > worst:
                    worst, worst_name = error, key
    return {"tensors": compared, "max_rel_rms_error": worst, "worst_tensor": worst_name}


def tensor_types(path: Path) -> dict[str, int]:
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def llama_cpp_figures(path: Path, samples: list[list[int]], reference_logits: list[Any], tokenizer,
                      texts: list[str]) -> dict[str, Any] | None:
    """llama.cpp's logits on the samples against the source's, and its tokenization of the texts (None: absent)."""
    if not has_llama_cpp():
        return None
    import numpy as np
    import torch
    from llama_cpp import Llama



    with native_output_captured():  # its context-size notes go to the C stderr even with verbose=False
        model = Llama(model_path=str(path), logits_all=True, verbose=False,
                      n_ctx=max(64, max(len(ids) for ids in samples) + 8))
    try:
        logits = []
        for ids in samples:
            model.reset()
            model.eval(ids)
            logits.append(torch.from_numpy(np.array(model.scores[: len(ids)], dtype=np.float32)))
        figures = compare_logits(reference_logits, logits)
        mismatches, first = 0, None
        for text in texts:
            ours = tokenizer(text, add_special_tokens=False)["input_ids"]
            theirs = model.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if ours != theirs:
                mismatches += 1
                first = first or text[:60]
    finally:
        model.close()
    figures["tokenization"] = {"texts": len(texts), "mismatches": mismatches, "first_mismatch": first}
    return figures


def verify_gguf(path: Path, source: Path, samples: list[list[int]], source_logits: list[Any],
                tokenizer) -> dict[str, Any]:
    """Every figure the runtimes here can give; the top-level KL/top-1 are the judging reader's."""
    from transformers import AutoModelForCausalLM


    figures: dict[str, Any] = {"tensor_types": tensor_types(path)}
    texts = [tokenizer.decode(ids) for ids in samples]
    arch = gguf_architecture(path)
    if transformers_reads(arch) and not experts_under_llama(path, arch):
        # transformers' reader fails on files llama.cpp reads (it ignores some keys, e.g. Qwen3's head size, and
        # falls back on its defaults): whatever it raises, it is recorded and llama.cpp judges instead
        try:
            exported = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype="float32").eval()
            figures.update(compare_models(source_logits, logits_for(exported, samples), samples))
            figures.update(weight_errors(exported, source))
            figures["judged_by"] = "transformers"
            del exported
        except Exception as exc:  # noqa: BLE001 - any failure of the reader is a finding, not a crash
            figures["transformers_error"] = _first_line(exc)
        try:
            # read back as lorakit unpacks a GGUF: transformers' rebuild, edited where it cuts text unlike llama.cpp
            with tempfile.TemporaryDirectory() as unpacked:
                gguf_tokenizer, _ = import_tokenizer(path, Path(unpacked))
            figures["tokenization"] = tokenization_matches(tokenizer, gguf_tokenizer, texts)
        except Exception as exc:  # noqa: BLE001 - e.g. its Gemma rebuild wants a SentencePiece <unk>
            figures["tokenizer_rebuild_error"] = _first_line(exc)
    cpp = llama_cpp_figures(path, samples, source_logits, tokenizer, texts)
    if cpp is not None:
        figures["llama_cpp"] = cpp
        if "judged_by" not in figures:
            figures.update({key: cpp[key] for key in ("mean_kl", "top1_agreement", "max_abs_logit_diff", "positions")})
            figures["judged_by"] = "llama.cpp"
        if "tokenization" not in figures:
            figures["tokenization"] = cpp["tokenization"]
    if "judged_by" not in figures:
        why = figures.get("transformers_error") or f"it does not know GGUF architecture '{arch}'"
        raise ResourceError(f"{path.name} could not be verified: transformers' GGUF reader failed ({why}) and "
                            "llama-cpp-python is not installed; nothing was written",
                            hint="pip install 'lorakit[llama-cpp]' (verifies in llama.cpp itself), or pass --no-verify")
    return figures


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"


# llama.cpp's own arithmetic moves logits even where the weights are exact: its quantized matmuls round activations to
# 8 bits and its KV cache is f16. So the figure llama.cpp gives is held to the type's tolerance or this floor, whichever
# is larger. SmolLM2-135M-Instruct (its Q4_1 release, unpacked to float32) exported to q8_0 measured mean KL 7.7e-3 in
# llama.cpp (2.9e-3 in transformers' dequantized reading); Gemma 3 270M q8_0 0.046 (0.021 in transformers, f16 6.3e-5
# in llama.cpp: the file is right); a broken export (a wrong permutation or vocabulary) measures above 0.1.
LLAMA_CPP_KL_FLOOR = 0.06


def judged_tolerance(tolerance: float, runtime: str | None) -> float:
    """The mean-KL bound for the figures of `runtime` (transformers or llama.cpp)."""
    return max(tolerance, LLAMA_CPP_KL_FLOOR) if runtime == "llama.cpp" else tolerance


def problems(figures: dict[str, Any], tolerance: float, qtype: str) -> list[str]:
    """What makes the export differ from its source beyond the type's tolerance, one phrase each."""
    found = []
    judge = judged_tolerance(tolerance, figures["judged_by"])
    if figures["mean_kl"] > judge:
        found.append(f"mean KL {figures['mean_kl']:.3g} > {judge:g} for {qtype} ({figures['judged_by']})")
    tok = figures.get("tokenization")
    if tok and tok["mismatches"]:
        found.append(f"tokenization differs on {tok['mismatches']} of {tok['texts']} sample chats")
    cpp = figures.get("llama_cpp")
    if cpp and figures["judged_by"] != "llama.cpp":
        # the file must run right in the runtime it is for, too (a setting llama.cpp hard-codes, e.g. Qwen3-MoE's
        # normalized router weights, shows only there)
        bound = judged_tolerance(tolerance, "llama.cpp")
        if cpp["mean_kl"] > bound:
            found.append(f"mean KL {cpp['mean_kl']:.3g} > {bound:g} for {qtype} in llama.cpp")
        if cpp["top1_agreement"] < 0.9 * figures["top1_agreement"]:
            found.append(f"llama.cpp's predictions disagree (top-1 {cpp['top1_agreement']:.3f})")
    if cpp:
        if cpp["tokenization"] is not tok and cpp["tokenization"]["mismatches"]:
            found.append(f"llama.cpp tokenizes {cpp['tokenization']['mismatches']} of "
                         f"{cpp['tokenization']['texts']} sample chats differently")
    return found
