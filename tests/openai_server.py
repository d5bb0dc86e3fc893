"""An OpenAI-compatible HTTP server on loopback, for tests of the ``api`` generator.

It serves ``POST /v1/chat/completions`` and ``POST /v1/completions`` (and ``GET /v1/models``)
from a stdlib ``ThreadingHTTPServer`` in a daemon thread, in OpenAI's JSON shapes
(``choices[0].message.content`` / ``choices[0].text``, ``usage.prompt_tokens`` /
``completion_tokens``), so the real ``openai`` client talks to it unchanged. It answers with
a *model*: a callable ``(prompt, seed, max_tokens) -> (text, prompt_tokens, completion_tokens)``:

* :class:`EchoModel`: deterministic; fills a fill-in prompt's blanks and echoes its text, or
  writes words for any other prompt, from a hash of (salt, prompt, seed); tokens are words.
  Its texts start with ``<salt>:`` so a test can tell which server made a text.
* :class:`TinyTransformersModel`: a tiny random GPT-2 (``tests/tiny_llm.py``) sampling with
  ``generate``; tokens counted by its tokenizer.

Faults are scripted: ``fail_next(n, status, retry_after=...)`` answers the next ``n`` requests
with an error, ``delay_next(n, seconds)`` sleeps before answering (a client timeout),
``stop_after(n)`` shuts the server down once ``n`` requests were answered (a server killed
mid-run), ``stop()`` / ``start()`` take it down and up again on the same port. It counts
what it saw (``requests``, ``answered``, ``prompt_tokens``, ``completion_tokens``) and
keeps each request's body and ``Authorization`` header (``log``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["EchoModel", "OpenAIServer", "TinyTransformersModel"]

WORDS = ("good", "bad", "food", "staff", "slow", "fast", "warm", "cold", "tasty", "rude", "kind", "place",
         "soup", "wait", "price", "table", "lovely", "awful", "fresh", "noisy")


class EchoModel:
    """A deterministic stand-in LLM: fills blanks (``_``) or writes words, keyed by (salt, prompt, seed)."""

    def __init__(self, salt: str = "a", blank: str = "_") -> None:
        self.salt, self.blank = salt, blank

    def __call__(self, prompt: str, seed: int | None, max_tokens: int) -> tuple[str, int, int]:
        digest = hashlib.sha256(f"{self.salt}|{seed}|{prompt}".encode()).digest()
        pick = iter(digest * 8)
        body = prompt.rsplit("\n", 1)[-1] if "\n" in prompt else ""
        if body and self.blank in body.split():
            words = [WORDS[next(pick) % len(WORDS)] if w == self.blank else w for w in body.split()]
        else:
            words = [WORDS[next(pick) % len(WORDS)] for _ in range(6)]
        words = [f"{self.salt}:"] + words[: max(1, max_tokens - 1)]
        return " ".join(words), len(prompt.split()), len(words)


class TinyTransformersModel:
    """The tiny random GPT-2 of ``tests/tiny_llm.py`` behind the API (seeded sampling per request)."""

    def __init__(self, path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        self._lock = threading.Lock()  # one generate at a time: torch's RNG is global

    def __call__(self, prompt: str, seed: int | None, max_tokens: int) -> tuple[str, int, int]:
        torch = self._torch
        ids = self.tokenizer(prompt, return_tensors="pt")
        with self._lock, torch.inference_mode(), torch.random.fork_rng():
            torch.manual_seed(0 if seed is None else seed)
            out = self.model.generate(**ids, do_sample=True, top_k=0, max_new_tokens=max_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True), int(ids["input_ids"].shape[1]), int(len(new))


class OpenAIServer:
    """A loopback OpenAI-compatible server answering with ``model`` (see the module doc)."""

    def __init__(self, model: Callable[[str, int | None, int], tuple[str, int, int]] | None = None,
                 key: str | None = None, port: int = 0) -> None:
        self.model = model or EchoModel()
        self.key = key
        self.port = port
        self._lock = threading.Lock()
        self._faults: list[tuple[str, Any]] = []
        self._stop_after: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self.reset_counts()
        self.start()

    # -- control

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                outer._handle(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                outer._handle(self, json.loads(self.rfile.read(length) or b"{}"))

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Take the server down (connections are refused until ``start``)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.answered = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.log: list[dict[str, Any]] = []

    def fail_next(self, n: int, status: int, retry_after: str | None = None) -> None:
        with self._lock:
            self._faults += [("status", (status, retry_after))] * n

    def delay_next(self, n: int, seconds: float) -> None:
        with self._lock:
            self._faults += [("delay", seconds)] * n

    def stop_after(self, n: int) -> None:
        """Shut down once ``n`` more requests were answered (the server killed mid-run)."""
        with self._lock:
            self._stop_after = self.answered + n

    # -- serving

    def _handle(self, handler: BaseHTTPRequestHandler, body: dict[str, Any] | None) -> None:
        path = handler.path.split("?")[0]
        if body is None:
            if path == "/v1/models":
                return self._send(handler, 200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})
            return self._send(handler, 404, {"error": {"message": "not found"}})
        with self._lock:
            self.requests += 1
            self.log.append({"path": path, "body": body, "authorization": handler.headers.get("authorization")})
            fault = self._faults.pop(0) if self._faults else None
        if self.key is not None and handler.headers.get("authorization") != f"Bearer {self.key}":
            return self._send(handler, 401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
        if fault is not None and fault[0] == "status":
            status, retry_after = fault[1]
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            return self._send(handler, status, {"error": {"message": f"scripted {status}"}}, headers)
        if fault is not None and fault[0] == "delay":
            time.sleep(fault[1])
        if path == "/v1/chat/completions":
            prompt = "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")
            limit = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        elif path == "/v1/completions":
            prompt, limit = body["prompt"], body.get("max_tokens") or 16
        else:
            return self._send(handler, 404, {"error": {"message": "not found"}})
        text, n_in, n_out = self.model(prompt, body.get("seed"), int(limit))
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        if path == "/v1/chat/completions":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            payload = {"object": "chat.completion"}
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            payload = {"object": "text_completion"}
        payload.update(id="cmpl-test", created=int(time.time()), model=body.get("model"), choices=[choice],
                       usage=usage)
        with self._lock:
            self.answered += 1
            self.prompt_tokens += n_in
            self.completion_tokens += n_out
            stop = self._stop_after is not None and self.answered >= self._stop_after
            if stop:
                self._stop_after = None
        self._send(handler, 200, payload)
        if stop:
            threading.Thread(target=self.stop, daemon=True).start()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
            pass
