"""Load tokenizers and base models safely, and wrap them in LoRA.

Safety first: weights load from safetensors only (pickle checkpoints are refused), and code shipped with a model
runs only when the recipe sets `model.trust_remote_code`. Every check that needs no weights runs before loading.
The same code serves the tiny CPU model and a 7B model on a GPU: dtype, quantization and device placement are
chosen from the hardware (`resolve_device`, `resolve_precision`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.chat_template import choose_chat_template
from lorakit.compat import keep_4bit_training_kernel
from lorakit.errors import ConfigError, ModelError
from lorakit.gguf_source import import_gguf, is_gguf_file, read_import_manifest, source_record
from lorakit.io import read_json
from lorakit.outputs import BaseModelRecord, Run
from lorakit.outputs.integrity import load_adapter
from lorakit.outputs.manifest import GGUFSource
from lorakit.tiny import BUILTIN_PREFIX, resolve_builtin

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|endoftext|>", "<unk>")


@dataclass(frozen=True)
class ModelSource:
    """Where a base model lives: a local folder (checked), a hub id (checked when it is fetched), or the cached
    folder a GGUF file was unpacked into (`gguf` then says which file, its hash, and that it was dequantized)."""

    name: str  # what the user wrote
    location: str  # local folder path or hub id
    is_local: bool
    revision: str | None = None
    gguf: GGUFSource | None = None

    def record(self) -> BaseModelRecord:
        """How a run's manifest names its base, so merge, eval and quantize can find it (or rebuild it) later."""
        if self.gguf:
            return BaseModelRecord(name=self.name, location=self.location, revision=self.revision, gguf=self.gguf)
        return BaseModelRecord(name=self.name, location=self.location, revision=self.revision)


def resolve_model_source(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelSource:
    if not str(name_or_path).strip():  # Path("") is "." : an empty name would mean the current folder
        raise ModelError("the model name is empty", hint="give a hub id, a model folder or builtin:tiny-llama")
    if name_or_path.startswith(BUILTIN_PREFIX):
        return ModelSource(name_or_path, str(resolve_builtin(name_or_path)), True)
    path = Path(name_or_path).expanduser()
    if path.is_file() and (path.suffix.lower() == ".gguf" or is_gguf_file(path)):
        return gguf_model_source(name_or_path, path)
    if path.exists():
        check_model_folder(path, trust_remote_code)
        return ModelSource(name_or_path, str(path.resolve()), True)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"model folder {name_or_path} not found", hint="check model.name_or_path / --model")
    return ModelSource(name_or_path, name_or_path, False, revision)


def gguf_model_source(name: str, path: Path) -> ModelSource:
    if not is_gguf_file(path):
        raise ModelError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
                         hint="re-download it, or point --model at a model folder")
    folder, _ = import_gguf(path)
    return ModelSource(name, str(folder), True, gguf=source_record(folder))


def check_model_folder(path: Path, trust_remote_code: bool) -> None:
    if not path.is_dir():
        raise ModelError(f"{path} is not a model folder or a GGUF file",
                         hint="point --model at a folder with config.json, or at a .gguf file")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path} has no config.json", hint="a model folder needs config.json and *.safetensors")
    config = read_json(config_file, ModelError, hint="re-download the model, or fix config.json")
    weights = list(path.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelError(
                f"{path} has only pickle weights ({', '.join(sorted(pickles)[:3])}); lorakit loads safetensors only",
                hint="pickle files can run arbitrary code; convert them to safetensors with a tool you trust",
            )
        raise ModelError(f"{path} has no weights (*.safetensors)", hint="the model folder is incomplete")
    if needs_remote_code(config) and not trust_remote_code:
        raise ModelError(
            f"{path} needs its own Python code (auto_map in config.json), which is not trusted by default",
            hint="read that code, then set model.trust_remote_code: true if you trust it",
        )


def needs_remote_code(config: dict[str, Any]) -> bool:
    auto_map = config.get("auto_map") or {}
    return any(key.startswith("AutoModel") for key in auto_map)


def _causes(exc: BaseException):
    """The exception and what it was raised from (transformers wraps hub errors in an OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def hub_error(source: ModelSource, exc: Exception) -> ModelError:
    """A clean error for a model or tokenizer that failed to load: by the hub error's type where there is one."""
    from huggingface_hub import errors as hub

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for cause in _causes(exc):
        if isinstance(cause, hub.GatedRepoError):
            return ModelError(f"{source.name} is a gated model: its files need an accepted licence and a login",
                              hint="accept its terms on huggingface.co, then `hf auth login` (or pass a local copy)")
        if isinstance(cause, hub.RevisionNotFoundError):
            return ModelError(f"{source.name} has no revision {source.revision!r} on the hub",
                              hint="check model.revision (a branch, tag or commit)")
        if isinstance(cause, hub.RepositoryNotFoundError):
            return ModelError(f"{source.name} is neither a local folder nor a model on the hub",
                              hint="check the model id or path (private models need `hf auth login`)")
        if isinstance(cause, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)):
            return ModelError(f"cannot load {source.name}: it is not a local folder or in the hub cache, and it could "
                              "not be fetched: the hub is offline (HF_HUB_OFFLINE) or unreachable",
                              hint="download the model while online, or pass its local folder")
    # No typed hub error: transformers' own messages (remote code, missing files) are the best we have.
    if "trust_remote_code" in str(exc):
        return ModelError(f"{source.name} needs its own Python code, which is not trusted by default",
                          hint="read that code, then set model.trust_remote_code: true if you trust it")
    if source.is_local:
        return ModelError(f"cannot load {source.name}: {first}", hint="check that the model folder is complete")
    return ModelError(
        f"cannot load {source.name}: not a local folder, and the hub copy could not be fetched ({first})",
        hint="check the model id and your network, or download the model and pass its folder",
    )


# ---------------------------------------------------------------------------------------------------------------
# Hardware


def resolve_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """A CPU whose instructions compute in bf16 (x86 AVX512-BF16 or AMX-BF16, as Linux lists them): there bf16
    matmuls run about twice as fast as fp32 ones; elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str, cpu_bf16: bool = False) -> str:
    """auto -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on the CPU (bf16 there is slow), except that
    `cpu_bf16` (a stage that gains from it: GRPO, whose time is mostly decoding) takes bf16 on a CPU with native bf16
    (cpu_has_native_bf16)."""
    if precision == "fp16" and device == "cpu":
        # the Trainer's fp16 mixed precision needs a CUDA GradScaler; on the CPU it fails or trains in fp32 anyway
        raise ConfigError("train.precision fp16 needs a CUDA GPU, and this machine has none",
                          hint="use train.precision auto (fp32 on the CPU), fp32 or bf16")
    if precision != "auto":
        return precision
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16 and cpu_has_native_bf16() else "fp32"


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
            "fp32": torch.float32, "float32": torch.float32}[name]


def has_flash_attention() -> bool:
    """flash-attn 2 installed in a usable version on a GPU that runs it (transformers' own check)."""
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def device_map(device: str) -> dict[str, Any]:
    """Where each process puts its copy of the base: its own GPU (LOCAL_RANK of a multi-process run), or the CPU."""
    if device != "cuda":
        return {"": "cpu"}
    several = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    return {"": int(os.environ.get("LOCAL_RANK", "0") or 0) if several else 0}


def quant_storage_dtype(precision: str) -> str | None:
    """QLoRA under FSDP: the dtype bitsandbytes packs the 4-bit weights into, so FSDP can flatten and shard them with
    the rest (PEFT's FSDP guide: bf16 storage for bf16 training, fp32 for fp16 autocast)."""
    return {"bf16": "bfloat16", "fp16": "float32", "fp32": "float32"}.get(precision)


def resolve_attn(attn: str, device: str) -> str:
    """auto -> flash-attention 2 on CUDA when it is installed, PyTorch's SDPA otherwise."""
    has_flash = has_flash_attention()
    if attn == "flash_attention_2" and not has_flash:
        raise ModelError("model.attn_implementation is flash_attention_2, but flash-attn 2 is not installed or this "
                         "machine has no GPU it runs on", hint="pip install flash-attn on a CUDA machine, or use sdpa")
    if attn != "auto":
        return attn
    return "flash_attention_2" if device == "cuda" and has_flash else "sdpa"


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False, chat_template: str | None = None):
    """The tokenizer at `source`, with its chat template and a pad token. Which tokens stop the model is a separate
    value (lorakit.chat_template.Stops), computed from this tokenizer and the model's generation config."""
    return load_tokenizer_and_template(source, trust_remote_code, chat_template)[0]


def load_tokenizer_and_template(source: ModelSource, trust_remote_code: bool = False, chat_template: str | None = None):
    """(tokenizer, lorakit.chat_families.TemplateChoice): load_tokenizer, and which chat template it got and why
    (a tokenizer without one gets its model family's, from the config.json beside it)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.location, revision=source.revision, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise hub_error(source, exc) from None
    choice = choose_chat_template(tokenizer, chat_template, model_type_of(source))
    ensure_pad_token(tokenizer)
    return tokenizer, choice


def model_type_of(source: ModelSource) -> str | None:
    """config.json's `model_type` of a local model folder (or a hub model already in the cache); None if unknown."""
    path = Path(source.location) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source.location, "config.json", revision=source.revision)
        except Exception:
            cached = None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        value = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def ensure_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token, avoiding EOS where the vocabulary has a better one."""
    if tokenizer.pad_token is not None:
        return
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and candidate != tokenizer.eos_token:
            tokenizer.pad_token = candidate
            return
    # EOS as padding is safe here: lorakit's labels come from its own masks, not from `input_ids != pad`
    # (the lint checks this through the real collator).
    tokenizer.pad_token = tokenizer.eos_token


def quantization_config(method: str, qlora, compute_dtype, quant_storage=None):
    """bitsandbytes 4-bit NF4. `quant_storage`: the float dtype the packed 4-bit weights are stored in, so FSDP can
    shard them with the other weights (None: uint8, bitsandbytes' default)."""
    if method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    extra = {"bnb_4bit_quant_storage": quant_storage} if quant_storage is not None else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qlora.quant_type,
        bnb_4bit_use_double_quant=qlora.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        **extra,
    )


def load_base_model(
    source: ModelSource,
    method: str,
    qlora,
    precision: str,
    device: str,
    attn: str = "auto",
    trust_remote_code: bool = False,
    strategy: str = "ddp",
):
    """The frozen base model in the run's dtype; 4-bit NF4 (bitsandbytes) when method is qlora.

    Each training process loads its own copy onto its own GPU. Under FSDP the copy stays where accelerate wants it
    (FSDP places and shards it), and QLoRA stores its 4-bit weights in a float dtype FSDP can shard, loading the
    model in that dtype (PEFT's FSDP-QLoRA guide).
    """
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(precision)
    storage = None
    if strategy == "fsdp" and method == "qlora":
        storage = torch_dtype(quant_storage_dtype(precision))
    kwargs: dict[str, Any] = dict(
        dtype=storage or dtype,
        attn_implementation=resolve_attn(attn, device),
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        revision=source.revision,
        quantization_config=quantization_config(method, qlora, dtype, storage),
    )
    if (method == "qlora" or device == "cuda") and strategy not in ("fsdp", "zero3"):
        # bitsandbytes quantizes while placing weights, so the device must be known at load time.
        kwargs["device_map"] = device_map(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except ImportError as exc:
        raise ModelError(f"cannot load {source.name}: {exc}", hint="install the missing package") from None
    except Exception as exc:
        raise hub_error(source, exc) from None
    return keep_4bit_layout_on_cpu(model)


def keep_4bit_layout_on_cpu(model):
    """4-bit models keep bitsandbytes' training kernel on the CPU (see lorakit.compat.keep_4bit_training_kernel)."""
    if not getattr(model, "is_loaded_in_4bit", False):
        return model
    return keep_4bit_training_kernel(model)


def lora_config(lora, target_modules=None, trainable_tokens: dict[str, list[int]] | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_modules or lora.target_modules,
        target_parameters=list(lora.target_parameters) or None,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        modules_to_save=list(lora.modules_to_save) or None,
        bias=lora.bias,
        task_type="CAUSAL_LM",
        trainable_token_indices=trainable_tokens or None,
    )


def grow_vocabulary(model, vocab_size: int, new_ids: list[int]) -> dict[str, list[int]] | None:
    """Give the model rows for tokens added to its tokenizer (lorakit.chat_families' ChatML fallback) and name the
    rows to train: a LoRA adapter cannot reach embedding rows, and new ones start untrained.

    The new rows start at the mean of the old ones (transformers' mean_resizing); PEFT's trainable tokens then train
    only those rows, in the input embedding and, when it is not tied to it, the output head, and save their values in
    the adapter (lorakit.outputs.integrity.load_adapter grows a base the same way before loading one).
    """
    if not new_ids:
        return None
    if model.get_input_embeddings().weight.shape[0] < vocab_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=True)
    names = {id(module): name for name, module in model.named_modules()}
    targets = {names[id(model.get_input_embeddings())].rsplit(".", 1)[-1]: list(new_ids)}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        targets[names[id(head)].rsplit(".", 1)[-1]] = list(new_ids)
    return targets


def check_lora_targets(model, lora) -> None:
    """Every module named in lora.target_modules / modules_to_save must exist (PEFT matches by name or suffix)."""
    names = [name for name, _ in model.named_modules()]

    def exists(key: str) -> bool:
        return any(name == key or name.endswith("." + key) for name in names)

    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if name and not list(module.children())})
    for field_name, keys in (("target_modules", [] if lora.target_modules == "all-linear" else lora.target_modules),
                             ("modules_to_save", lora.modules_to_save)):
        missing = [key for key in keys if not exists(key)]
        if missing:
            raise ModelError(f"lora.{field_name} names module(s) {', '.join(missing)} that the model does not have",
                             hint=f"module names in this model: {', '.join(leaves[:20])}")
    parameters = [name for name, _ in model.named_parameters()]
    missing = [key for key in lora.target_parameters
               if not any(name == key or name.endswith("." + key) for name in parameters)]
    if missing:
        shaped = sorted({name.split(".", 3)[-1] for name, p in model.named_parameters() if p.dim() >= 3})
        raise ModelError(f"lora.target_parameters names parameter(s) {', '.join(missing)} that the model does not "
                         "have", hint=f"3-D parameters (experts) in this model: {', '.join(shaped[:10]) or 'none'}")


def choose_kbit_upcast(setting, precision: str) -> tuple[bool, str]:
    """Whether a 4-bit base's embeddings, norms and head are cast to fp32 for training (PEFT's
    prepare_model_for_kbit_training), and why.

    That cast makes the residual stream fp32, and with it everything a 4-bit layer returns (bitsandbytes answers in
    its input's dtype): q/k/v and the MLP intermediates take twice the memory of the compute dtype. lorakit keeps them
    in the compute dtype instead, as Unsloth does; the numerically sensitive parts stay fp32 anyway (transformers'
    RMSNorm computes its statistics in fp32, and both of lorakit's loss heads take the log-softmax in fp32). fp16's
    narrow range is the exception: a 16-bit residual stream can overflow there, so fp16 runs keep PEFT's upcast.
    """
    if setting is True:
        return True, "qlora.upcast_to_fp32: true (PEFT's prepare_model_for_kbit_training: fp32 residual stream)"
    if setting is False:
        return False, f"qlora.upcast_to_fp32: false ({precision} residual stream)"
    if precision == "fp16":
        return True, "fp16: embeddings, norms and head in fp32 (a 16-bit residual stream can overflow fp16)"
    if precision == "fp32":
        return False, "fp32: the whole model is fp32 already"
    return False, (f"embeddings, norms and head in {precision}, like the activations (norm statistics and loss in "
                   "fp32)")


def freeze_base(model):
    """What prepare_model_for_kbit_training does besides its fp32 cast: every base weight frozen (the trainer's own
    non-reentrant checkpointing needs no input-gradient hook)."""
    for param in model.parameters():
        param.requires_grad = False
    return model


def load_policy(source: ModelSource, recipe, precision: str, device: str, parent_adapter: Path | None = None,
                strategy: str = "ddp", vocab_size: int | None = None, new_token_ids: list[int] = ()):
    """The model a run trains and the LoRA config its TRL trainer attaches: one path for SFT and DPO.

    The base loads in the run's dtype (4-bit NF4 for QLoRA, then prepared for k-bit training). Continuing a run, its
    adapter is loaded trainable and no config is returned. Otherwise the trainer gets a `LoraConfig` and applies it
    itself, so TRL's own PEFT handling (QLoRA's bf16 adapter weights, DeepSpeed ZeRO-3's adapter dtype) applies the
    same way to both stages. `new_token_ids`: tokens the run added to the tokenizer (`vocab_size` long now), whose
    rows are grown and trained (grow_vocabulary).
    """
    from peft import prepare_model_for_kbit_training

    model = load_base_model(source, recipe.method, recipe.qlora, precision, device,
                            recipe.model.attn_implementation, recipe.model.trust_remote_code, strategy)
    # Under FSDP the k-bit preparation is skipped, as in PEFT's FSDP-QLoRA guide: its fp32 upcast of the norms would
    # mix dtypes inside the units FSDP flattens (the trainer's gradient checkpointing still applies).
    if recipe.method == "qlora" and strategy != "fsdp":
        if choose_kbit_upcast(recipe.qlora.upcast_to_fp32, precision)[0]:
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=recipe.train.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        else:
            freeze_base(model)
    if parent_adapter is not None:
        return load_adapter(model, parent_adapter, f"run {parent_adapter}", is_trainable=True), None
    check_lora_targets(model, recipe.lora)
    trainable_tokens = grow_vocabulary(model, vocab_size or 0, list(new_token_ids))
    return model, lora_config(recipe.lora, trainable_tokens=trainable_tokens)


# ---------------------------------------------------------------------------------------------------------------
# The base of a run


def base_source_of(run: Run, override: str | None = None) -> ModelSource:
    """The base model a run was trained on; re-resolved if its recorded folder moved (built-ins are rebuilt)."""
    trust = run.recipe.model.trust_remote_code
    if override is not None and not override.strip():
        raise ModelError("--model is empty", hint="give the base model's hub id or folder, or leave --model out")
    if override:
        return resolve_model_source(override, None, trust)
    base = run.manifest.base_model
    assert base is not None and base.location  # read_run checked it
    if base.gguf:
        return gguf_base_source(run, base)
    if Path(base.location).is_dir():
        check_model_folder(Path(base.location), trust)
        return ModelSource(base.name, base.location, True, base.revision)
    name = base.name
    if name.startswith(BUILTIN_PREFIX) or Path(name).exists() or ("/" in name and not name.startswith((".", "/"))):
        return resolve_model_source(name, base.revision, trust)
    raise ModelError(f"the base model of {run.path} ({base.location}) is gone",
                     hint="pass --model with the base model's folder or hub id")


def gguf_base_source(run: Run, base: BaseModelRecord) -> ModelSource:
    """A base unpacked from a GGUF file: its cached folder, or the same file unpacked again (checked by its hash)."""
    record = base.gguf
    assert record is not None and base.location
    cached = read_import_manifest(base.location)
    if cached is not None and cached.sha256 == record.sha256:
        return ModelSource(base.name, base.location, True, gguf=record)
    for candidate in dict.fromkeys((record.path, base.name)):
        if candidate and Path(candidate).expanduser().is_file():
            source = resolve_model_source(str(candidate))
            if source.gguf and source.gguf.sha256 == record.sha256:
                return ModelSource(base.name, source.location, True, gguf=source.gguf)
            raise ModelError(f"the base of {run.path} was unpacked from {candidate}, which has changed since "
                             f"(SHA-256 {str(source.gguf and source.gguf.sha256)[:12]}, trained on "
                             f"{str(record.sha256)[:12]})",
                             hint="put the original GGUF file back, or pass --model with it")
    raise ModelError(f"the base of {run.path} was unpacked from {record.path}, and neither that file nor "
                     f"its unpacked copy ({base.location}) is there any more",
                     hint="pass --model with the same GGUF file (checked by its SHA-256)")
