"""Inference servers for the tests on 127.0.0.1: real ones in subprocesses (`dits.engines.launch`) and
`VLLMStub`, the subset of vLLM's OpenAI API that the server engine uses, answered by an in-process
`HFEngine`, with failures on demand."""

from __future__ import annotations

import json
import threading
import time
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dits.engines.base import BASE, GenerationRequest, SamplingParams
from dits.engines.hf import HFEngine


class VLLMStub:
    """vLLM's API as the server engine uses it, answered by ``HFEngine(model)``: ``GET /v1/models``, seeded
    ``POST /v1/chat/completions`` (with vLLM's ``stop_reason`` and the EOS counted in ``usage``),
    ``POST /v1/completions`` with ``echo``/``logprobs`` over token ids, and runtime LoRA loading.

    ``fail_next`` lists statuses the next requests answer; ``dead`` (a status) answers every request so;
    ``delay_s`` holds each generation request, and ``max_in_flight`` records how many were held at once.
    """

    def __init__(self, model: str, *, lora_endpoints: bool = True) -> None:
        self.engine = HFEngine(model, batch_size=4)
        self.model = model
        self.lora_endpoints = lora_endpoints
        self.fail_next: list[int] = []
        self.dead: int | None = None
        self.delay_s = 0.0
        self.requests = 0
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub._answer(self, "GET", {})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                stub._answer(self, "POST", json.loads(self.rfile.read(length) or b"{}"))

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    # ------------------------------------------------------------------ dispatch
    def _answer(self, handler: BaseHTTPRequestHandler, method: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests += 1
            status = self.fail_next.pop(0) if self.fail_next else self.dead
        if status is not None:
            return _send(handler, status, {"error": {"message": f"injected failure {status}"}})
        routes = {
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._prompt_logprobs,
        }
        if self.lora_endpoints:
            routes[("POST", "/v1/load_lora_adapter")] = self._load
            routes[("POST", "/v1/unload_lora_adapter")] = self._unload
        route = routes.get((method, handler.path))
        if route is None:
            return _send(handler, 404, {"detail": "Not Found"})
        status, answer = route(body)
        _send(handler, status, answer)

    def _adapter(self, model: str) -> str | None:
        if model == self.model:
            return BASE
        return model if model in self.engine.adapters() else None

    def _models(self, body: dict[str, Any]) -> tuple[int, Any]:
        names = [self.model, *self.engine.adapters()]
        return 200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}

    def _chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        adapter = self._adapter(body["model"])
        if adapter is None:
            return 404, {"error": {"message": f"The model `{body['model']}` does not exist."}}
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.delay_s)
        stops = tuple(body.get("stop") or ())
        params = SamplingParams(
            temperature=body["temperature"],
            top_p=body["top_p"],
            max_new_tokens=body["max_tokens"],
            stop=stops,
        )
        try:
            with self._lock:
                (done,) = self.engine.generate(
                    [GenerationRequest(body["messages"], adapter=adapter, seed=body["seed"])], params
                )[0]
        finally:
            with self._lock:
                self.in_flight -= 1
        full = self.engine.tokenizer.decode(done.token_ids, skip_special_tokens=True)
        stop_reason = next((s for s in stops if s in full), None)
        eos = done.finish_reason == "stop" and stop_reason is None  # vLLM counts the EOS token
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "finish_reason": done.finish_reason,
            "stop_reason": stop_reason,
        }
        return 200, {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": 0, "completion_tokens": done.num_tokens + eos, "total_tokens": 0},
        }

    def _prompt_logprobs(self, body: dict[str, Any]) -> tuple[int, Any]:
        import torch

        ids = body["prompt"]
        if body.get("model") != self.model or not body.get("echo") or not isinstance(ids, list):
            return 400, {"error": {"message": "the stub scores token-id prompts of the base model with echo"}}
        model = self.engine.model
        off = model.disable_adapter() if hasattr(model, "peft_config") else nullcontext()
        with self._lock, torch.inference_mode(), off:
            logits = self.engine.model(input_ids=torch.tensor([ids])).logits[0].float()
        logprobs = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        choice = {
            "index": 0,
            "text": "",
            "finish_reason": "length",
            "logprobs": {"token_logprobs": [None, *logprobs.tolist(), -1.0], "tokens": [], "text_offset": []},
        }
        return 200, {"object": "text_completion", "created": 0, "model": self.model, "choices": [choice]}

    def _load(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body["lora_name"] in self.engine.adapters():
            return 400, {
                "error": {"message": f"The lora adapter '{body['lora_name']}' has already been loaded."}
            }
        with self._lock:
            self.engine.load_adapter(body["lora_name"], body["lora_path"])
        return 200, f"Success: LoRA adapter '{body['lora_name']}' added successfully."

    def _unload(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body["lora_name"] not in self.engine.adapters():
            return 404, {"error": {"message": f"The lora adapter '{body['lora_name']}' cannot be found."}}
        with self._lock:
            self.engine.remove_adapter(body["lora_name"])
        return 200, f"Success: LoRA adapter '{body['lora_name']}' removed successfully."


def _send(handler: BaseHTTPRequestHandler, status: int, answer: Any) -> None:
    data = (json.dumps(answer) if not isinstance(answer, str) else answer).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json" if not isinstance(answer, str) else "text/plain")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
