"""Generation settings: the decoding (part of every cache key) and the generator (backend, batch, servers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DecodingConfig:
    """Decoding settings; part of every generation cache key."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def hf_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        else:  # keep generation_config's sampling defaults from warning under greedy decoding
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw


BACKENDS = ("hf", "vllm", "openai")
# in-process engines (ssr.generation.engine); auto picks one by measurement
ENGINES = ("hf", "continuous")
ENGINE_CHOICES = ("auto", *ENGINES)


@dataclass
class GeneratorConfig:
    """How the base model writes its own answers and rewrites (``openai``: see ssr.generation.server)."""

    backend: str = "hf"  # hf | vllm | openai
    batch_size: int = 32
    # hf: autocast setting (ssr.runtime.precision): auto = measured on this machine; or bf16-mixed, 32-true...
    precision: str = "auto"
    # hf: KV cache passed to generate; "static" preallocates it (no per-step concatenation), null: dynamic
    cache_implementation: str | None = "static"
    # hf: in-process engine (ssr.generation.engine): auto = the faster one measured on this machine,
    # hf = transformers' generate in padded batches, continuous = continuous batching over a slotted KV cache
    engine: str = "auto"
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)
    # documents are cut so a prompt has at most this many tokens; null: SSRDataModule sets
    # data.max_length - decoding.max_new_tokens (what training can hold)
    max_prompt_tokens: int | None = None
    # openai: OpenAI-compatible completions servers (generator=openai; the keys below are for it)
    server: str = (
        "llama_cpp"  # llama_cpp: start llama-cpp-python's server here over `gguf`; external: base_urls
    )
    base_urls: list[str] = field(
        default_factory=list
    )  # external: e.g. [http://node1:8000/v1,...]; one queue feeds all
    served_model: str | None = None  # the model name to request; None: the first id of GET /v1/models
    gguf: str | None = None  # llama_cpp: a GGUF file; None: the embedded SmolLM2-135M-Instruct GGUF
    api_key_env: str | None = None  # name of the env var holding the API key (never the key); None: no auth
    max_concurrency: int = 4  # requests in flight per base URL (vLLM: 64+; llama-cpp-python: one at a time)
    timeout_s: float = 300.0
    max_retries: int = 3  # connect errors, timeouts, 5xx and 429 are retried with exponential backoff
    backoff_s: float = 1.0
    prompt_format: str = "text"  # text | token_ids (vLLM, SGLang: the server does not re-tokenize)
    extra_body: dict[str, Any] = field(
        default_factory=dict
    )  # extra request fields, e.g. {add_special_tokens: false}
    # llama_cpp server options: replicas (servers started, each serving one request at a time; None:
    # cores / n_threads), n_threads (per server; 1 is fastest for small models), n_ctx, n_batch,
    # startup_timeout_s (conf/generator/openai.yaml sets them)
    llama_cpp: dict[str, Any] = field(default_factory=dict)
    # rows also generated with generator=hf to report what the server changes (0: off; not for hf)
    fidelity_sample: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"unknown generator backend {self.backend!r}; valid choices: {', '.join(BACKENDS)}"
            )
        if self.engine not in ENGINE_CHOICES:
            raise ValueError(
                f"unknown generator.engine {self.engine!r}; valid choices: {', '.join(ENGINE_CHOICES)}"
            )
        if self.backend == "openai":
            check_server_options(self)


SERVERS = ("llama_cpp", "external")


PROMPT_FORMATS = ("text", "token_ids")


LLAMA_CPP_OPTIONS = ("replicas", "n_threads", "n_ctx", "n_batch", "startup_timeout_s")


def check_server_options(cfg: GeneratorConfig) -> None:
    """A one-line error naming the generator key that is wrong."""
    if cfg.server not in SERVERS:
        raise ValueError(f"generator.server={cfg.server!r}; valid choices: {', '.join(SERVERS)}")
    if cfg.prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"generator.prompt_format={cfg.prompt_format!r}; valid choices: {', '.join(PROMPT_FORMATS)}"
        )
    if cfg.server == "external" and not cfg.base_urls:
        raise ValueError("generator.server=external needs generator.base_urls (e.g. [http://host:8000/v1])")
    if cfg.server == "llama_cpp" and cfg.base_urls:
        raise ValueError(
            "generator.base_urls is set but generator.server=llama_cpp starts its own server; "
            "set generator.server=external to use the servers at base_urls"
        )
    if cfg.server == "llama_cpp" and cfg.prompt_format == "token_ids":
        raise ValueError("generator.prompt_format=token_ids: llama-cpp-python's server accepts text only")
    if cfg.max_concurrency < 1 or cfg.max_retries < 0 or cfg.timeout_s <= 0 or cfg.backoff_s < 0:
        raise ValueError(
            "generator needs max_concurrency >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0"
        )
    unknown = set(cfg.llama_cpp) - set(LLAMA_CPP_OPTIONS)
    if unknown:
        raise ValueError(
            f"generator.llama_cpp: unknown keys {sorted(unknown)}; valid: {', '.join(LLAMA_CPP_OPTIONS)}"
        )
    if cfg.fidelity_sample < 0:
        raise ValueError(f"generator.fidelity_sample={cfg.fidelity_sample}: must be >= 0 (0: off)")
