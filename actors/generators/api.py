"""An LLM behind an OpenAI-compatible HTTP API as PE's foundation model for text (Aug-PE).

``generator.kind: api`` calls any server that speaks OpenAI's ``/v1/chat/completions`` or
``/v1/completions`` (a vLLM server, Ray Serve LLM, llama.cpp's server, hosted APIs) through
the real ``openai`` client. The prompts are the ``llm`` kind's: :class:`APIGenerator` is an
:class:`~privevo.actors.generators.llm.LLMGenerator` whose one text-completion step
(``complete(prompts, seed)``, the step ``random`` and ``variation`` call) sends the prompts
to the API instead of a local model. So the random prompt, the Aug-PE variations
(fill-in-the-blanks, paraphrase, mixed), the masking, the cleaning and the fallbacks are
exactly the ``llm`` kind's, and so are their options.

Requests. One request per prompt (``n = 1``), up to ``max_concurrency`` at once per actor.
Each carries a seed derived from the shard's seed and the row (servers that honour it, such
as vLLM, then sample reproducibly; hosted APIs may not). Endpoints are used round-robin by
request; an endpoint that refuses a connection or times out is skipped for
``endpoint_cooldown_s`` while others are tried (failover). A 408, 409, 429 or 5xx answer, a
timeout or a connection error is retried up to ``max_retries`` times, waiting
``backoff_s * 2**attempt`` seconds with full jitter, capped at ``backoff_max_s``, or what the
server's ``Retry-After`` (or ``retry-after-ms``) asks, whichever is longer (capped too). The
client's own retries are off (``max_retries=0``): this loop also moves a retry to another
endpoint. Other errors (a refused key, an unknown model) fail the shard at once.

The key. ``api_key_env`` names an environment variable; the key is read from it inside the
actor, given to the client, and never written to a config, record, log, report or exception
message (messages are scrubbed of it). A config whose variable is unset is refused when it
is validated, before any private data is read. ``api_key_env: null`` sends no key (a local
server started without one).

Records. API sampling is not reproducible even with a seed, so the texts of every shard are
recorded, and a shard asked for again (a retried actor call, a resumed run, ``privevo
rebuild``) replays them instead of calling the API: the run's outputs stay a function of its
config, seed, releases and these recorded, public responses (made from public prompts and
synthetic parents only). A record is keyed by the shard's seed and a hash of its prompts and
of the request settings (model, API, sampling options), and written atomically (temp file,
fsync, rename) into ``GeneratorContext.record_dir`` (``RUN_DIR/generator-records/``). Without
a record folder nothing is recorded.

Metering. ``usage()`` hands the worker the counts since its last call: requests sent,
retries, input and output tokens (from the responses' ``usage``), money from the ``prices``
table (per million tokens, for ``model``), shards replayed and recorded.

The ``openai`` package (the ``[api]`` extra) is imported when a generator is built, never when
options are validated.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from privevo.actors.generators import llm
from privevo.actors.generators.base import GeneratorContext
from privevo.pipelines.files import write_json_atomic

__all__ = ["APIGenerator", "APIGeneratorError", "Options", "ResponseRecords", "TokenPrice", "retry_delay"]

# The llm kind's prompt and variation options, reused with their defaults, bounds and docs.
AUG_PE_OPTIONS = ("random_prompt", "prompts", "variation", "paraphrase_prompt", "fill_in_prompt", "blank",
                  "max_mask_fraction", "target_words", "empty_placeholder", "temperature", "top_p")
RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx
RECORD_FORMAT = 1
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_PromptOptions = create_model(
    "AugPEPromptOptions",
    __config__=ConfigDict(extra="forbid"),
    **{name: (llm.Options.model_fields[name].annotation, llm.Options.model_fields[name]) for name in AUG_PE_OPTIONS},
)


class _TemplateCheck(llm.Options):
    """The llm kind's own template checks, run without a model folder (the default path is never validated)."""

    model_path: str = ""


class TokenPrice(BaseModel, extra="forbid"):
    """Price of one model's tokens, per million, in the currency of the table."""

    input: float = Field(ge=0.0, description="per 1M input (prompt) tokens")
    output: float = Field(ge=0.0, description="per 1M output (completion) tokens")


class Options(_PromptOptions):
    """Typed options of the ``api`` generator; the prompt and variation fields are the llm kind's."""

    endpoints: list[str] = Field(min_length=1, description="base URLs of OpenAI-compatible servers, e.g. http://host:8000/v1")
    model: str = Field(min_length=1, description="the model name the server knows")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="NAME of the environment variable holding the key; null: send none"
    )
    api: Literal["chat", "completions"] = Field("chat", description="/chat/completions (one user turn) or /completions")
    system_prompt: str | None = Field(None, description="a system turn before each prompt (chat only)")
    max_tokens: int | None = Field(None, ge=1, description="completion limit in tokens; default 2 * target_words")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="the request field that carries max_tokens (chat; newer hosted models want the second)"
    )
    request_seed: bool = Field(True, description="send a per-request seed derived from the shard's seed")
    max_concurrency: int = Field(8, ge=1, le=512, description="requests in flight at once per generator actor")
    timeout_s: float = Field(120.0, gt=0.0, description="seconds one request may take")
    max_retries: int = Field(6, ge=0, le=100, description="retries of a request after a 408/409/429/5xx, timeout or lost connection")
    backoff_s: float = Field(1.0, ge=0.0, description="first retry's wait bound (doubles each retry, full jitter)")
    backoff_max_s: float = Field(60.0, ge=0.0, description="longest wait between attempts, Retry-After included")
    endpoint_cooldown_s: float = Field(30.0, ge=0.0, description="an endpoint that failed to connect or timed out is skipped this long")
    prices: dict[str, TokenPrice] = Field(
        default_factory=dict, description="model -> price per 1M input and output tokens, for the report's cost"
    )

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        out = []
        for url in value:
            if not re.match(r"https?://[^/\s]+", url):
                raise ValueError(f"{url!r} is not an http(s) URL (e.g. http://localhost:8000/v1)")
            out.append(url.rstrip("/"))
        if len(set(out)) != len(out):
            raise ValueError("an endpoint is listed twice")
        return out

    @model_validator(mode="after")
    def _checks(self) -> Options:
        # Named "field: message", so the run's error names the field; never the value of
        # api_key_env (someone may have pasted the key itself there).
        if self.api_key_env is not None:
            if not _ENV_NAME.fullmatch(self.api_key_env):
                raise ValueError("api_key_env: must be the NAME of an environment variable (letters, digits, _); "
                                 "never the key itself")
            if not os.environ.get(self.api_key_env):
                raise ValueError(f"api_key_env: the environment variable {self.api_key_env} is unset or empty; "
                                 "export the key in it (or set api_key_env: null for a server without keys)")
        if self.prices and self.model not in self.prices:
            raise ValueError(f"prices: no price for model {self.model!r} (priced: {sorted(self.prices)})")
        if self.system_prompt is not None and self.api != "chat":
            raise ValueError("system_prompt: only the chat API has a system turn")
        try:
            _TemplateCheck.model_validate({name: getattr(self, name) for name in AUG_PE_OPTIONS})
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            errors = getattr(exc, "errors", None)
            message = errors()[0]["msg"] if callable(errors) else str(exc)
            raise ValueError(message.removeprefix("Value error, ")) from None
        return self

    @property
    def completion_tokens(self) -> int:
        return self.max_tokens if self.max_tokens is not None else 2 * self.target_words

    def request_settings(self) -> dict[str, Any]:
        """What, beside the prompts, shapes a response (part of a record's key); endpoints are not."""
        return {"model": self.model, "api": self.api, "system_prompt": self.system_prompt,
                "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.completion_tokens,
                "request_seed": self.request_seed}


class APIGeneratorError(RuntimeError):
    """An API request that could not be served (retries spent, or an error not worth retrying)."""


def retry_delay(attempt: int, base: float, cap: float, retry_after: float | None, rng: np.random.Generator) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): full jitter on ``base * 2**attempt``,
    at least ``retry_after`` when the server asked for it, at most ``cap``."""
    backoff = float(rng.uniform(0.0, min(cap, base * 2.0 ** attempt)))
    if retry_after is not None:
        backoff = max(backoff, retry_after)
    return min(cap, backoff)


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


# --------------------------------------------------------------------------- records


class ResponseRecords:
    """Each shard's responses, one JSON file per shard in ``folder`` (None: nothing kept)."""

    def __init__(self, folder: str | Path | None, settings: dict[str, Any]) -> None:
        self.folder = None if folder is None else Path(folder)
        self._settings = json.dumps(settings, sort_keys=True)

    def key(self, seed: int, prompts: list[str]) -> str:
        digest = hashlib.sha256(self._settings.encode())
        for prompt in prompts:
            encoded = prompt.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        return f"shard-{int(seed)}-{digest.hexdigest()[:32]}"

    def path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.json"

    def load(self, key: str, n: int) -> list[str] | None:
        """The recorded texts of shard ``key`` (``n`` prompts), or None when it was never recorded."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            texts = record["responses"]
        except (ValueError, KeyError, TypeError) as exc:
            raise APIGeneratorError(f"{path}: not a response record ({type(exc).__name__}); "
                                    "remove it to ask the API again") from None
        if record.get("format") != RECORD_FORMAT or len(texts) != n or not all(isinstance(t, str) for t in texts):
            raise APIGeneratorError(f"{path}: holds {len(texts)} responses for {n} prompts or an unknown format")
        return texts

    def save(self, key: str, seed: int, texts: list[str], usage: dict[str, float]) -> None:
        path = self.path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"format": RECORD_FORMAT, "seed": int(seed), "settings": json.loads(self._settings),
                                 "responses": texts, "usage": usage}, indent=None)


# --------------------------------------------------------------------------- the client side


class _Endpoints:
    """Round-robin over the endpoints by request, skipping those that recently failed to answer."""

    def __init__(self, urls: list[str], cooldown: float) -> None:
        self.urls = urls
        self._cooldown = cooldown
        self._next = 0
        self._down_until = [0.0] * len(urls)
        self._lock = threading.Lock()

    def pick(self) -> int:
        with self._lock:
            now = time.monotonic()
            order = [(self._next + i) % len(self.urls) for i in range(len(self.urls))]
            up = [i for i in order if self._down_until[i] <= now]
            chosen = up[0] if up else min(order, key=lambda i: self._down_until[i])
            self._next = chosen + 1
            return chosen

    def failed(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = time.monotonic() + self._cooldown

    def any_up(self) -> bool:
        with self._lock:
            now = time.monotonic()
            return any(t <= now for t in self._down_until)


class APIGenerator(llm.LLMGenerator):
    """PE's ``random`` and ``variation`` for text, through an OpenAI-compatible API (see the module doc)."""

    modality = "text"
    uses_torch = False  # the worker need not import torch for this kind
    Options = Options

    def __init__(self, options: Options, context: GeneratorContext | None = None) -> None:
        # The llm kind's constructor loads a local model; this kind has none.
        self.options, self.context = llm.text_generator_setup(Options, options, context)
        options = self.options
        self.backend = "api"
        try:
            import openai
        except ImportError as exc:
            raise ImportError("generator kind 'api' needs the openai package: pip install 'privevo[api]'") from exc
        self._openai = openai
        self._key = os.environ.get(options.api_key_env, "") if options.api_key_env else ""
        if options.api_key_env and not self._key:
            raise APIGeneratorError(f"generator.options.api_key_env: the environment variable {options.api_key_env} "
                                    "is unset or empty on this node")
        self._clients = [
            openai.OpenAI(base_url=url, api_key=self._key or "none", timeout=options.timeout_s, max_retries=0)
            for url in options.endpoints
        ]
        self._endpoints = _Endpoints(options.endpoints, options.endpoint_cooldown_s)
        self._pool = ThreadPoolExecutor(max_workers=options.max_concurrency, thread_name_prefix="privevo-api")
        self.records = ResponseRecords(self.context.record_dir, options.request_settings())
        self._usage_lock = threading.Lock()
        self._usage = self._zero_usage()

    # -- metering

    def _zero_usage(self) -> dict[str, float]:
        usage = dict.fromkeys(("api_requests", "api_retries", "api_input_tokens", "api_output_tokens",
                               "api_replayed_shards", "api_recorded_shards"), 0)
        if self.options.prices:
            usage["api_cost"] = 0.0
        return usage

    def _count(self, **amounts: float) -> None:
        with self._usage_lock:
            for name, amount in amounts.items():
                self._usage[name] += amount

    def usage(self) -> dict[str, float]:
        """Counts since the last call (requests, retries, tokens, money, replayed and recorded shards)."""
        with self._usage_lock:
            out, self._usage = self._usage, self._zero_usage()
        return out

    def _cost(self, input_tokens: int, output_tokens: int) -> float:
        price = self.options.prices.get(self.options.model)
        return 0.0 if price is None else (input_tokens * price.input + output_tokens * price.output) / 1e6

    # -- the completion step of llm.LLMGenerator.random / variation

    def complete(self, prompts: list[str], seed: int) -> list[str]:
        if not prompts:
            return []
        key = self.records.key(seed, prompts)
        recorded = self.records.load(key, len(prompts))
        if recorded is not None:
            self._count(api_replayed_shards=1)
            return recorded
        abort = threading.Event()
        futures = [self._pool.submit(self._complete, prompt, seed, row, abort) for row, prompt in enumerate(prompts)]
        results, error = [], None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # stop the other rows' retries, keep the first error
                abort.set()
                error = error or exc
        if error is not None:
            raise error
        texts = [text for text, _, _ in results]
        tokens_in, tokens_out = sum(r[1] for r in results), sum(r[2] for r in results)
        usage = {"input_tokens": tokens_in, "output_tokens": tokens_out}
        if self.options.prices:
            usage["cost"] = self._cost(tokens_in, tokens_out)
        self.records.save(key, seed, texts, usage)
        self._count(api_recorded_shards=1 if self.records.folder is not None else 0)
        return texts

    def _request(self, client: Any, prompt: str, seed: int, row: int) -> Any:
        o = self.options
        kwargs: dict[str, Any] = {"model": o.model, "n": 1, "temperature": o.temperature, "top_p": o.top_p}
        if o.request_seed:
            kwargs["seed"] = llm.derive_seed(seed, 0, row)
        if o.api == "completions":
            return client.completions.create(prompt=prompt, max_tokens=o.completion_tokens, **kwargs)
        messages = [{"role": "user", "content": prompt}]
        if o.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": o.system_prompt})
        kwargs[o.max_tokens_field] = o.completion_tokens
        return client.chat.completions.create(messages=messages, **kwargs)

    def _complete(self, prompt: str, seed: int, row: int, abort: threading.Event) -> tuple[str, int, int]:
        """One prompt's text and its (input, output) tokens, retried as the module doc says."""
        o, openai = self.options, self._openai
        rng = np.random.default_rng(llm.derive_seed(seed, 3, row))  # jitter only: never shapes a sample
        last = ""
        for attempt in range(o.max_retries + 1):
            if abort.is_set():
                raise APIGeneratorError("cancelled: another request of this shard failed")
            index = self._endpoints.pick()
            self._count(api_requests=1, api_retries=1 if attempt else 0)
            retry_after = None
            try:
                response = self._request(self._clients[index], prompt, seed, row)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                self._endpoints.failed(index)
                last = f"{type(exc).__name__} from {self._endpoints.urls[index]}"
                if self._endpoints.any_up():
                    continue  # fail over at once: another endpoint is believed up
            except openai.APIStatusError as exc:
                status = exc.status_code
                last = f"HTTP {status} from {self._endpoints.urls[index]}: {self._scrub(str(exc))[:300]}"
                if status not in RETRY_STATUS and status < 500:
                    raise APIGeneratorError(self._fatal_message(status, last)) from None
                retry_after = retry_after_seconds(getattr(exc.response, "headers", None))
            else:
                return self._parse(response)
            if attempt < o.max_retries:
                abort.wait(retry_delay(attempt, o.backoff_s, o.backoff_max_s, retry_after, rng))
        raise APIGeneratorError(
            f"generator.options.max_retries: {o.max_retries + 1} attempts at model {o.model!r} failed "
            f"(endpoints {', '.join(self._endpoints.urls)}); last: {last}"
        )

    def _parse(self, response: Any) -> tuple[str, int, int]:
        choices = getattr(response, "choices", None) or []
        if not choices:
            text = ""
        elif self.options.api == "chat":
            text = choices[0].message.content or ""
        else:
            text = choices[0].text or ""
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = {"api_cost": self._cost(tokens_in, tokens_out)} if self.options.prices else {}
        self._count(api_input_tokens=tokens_in, api_output_tokens=tokens_out, **cost)
        return text, tokens_in, tokens_out

    def _fatal_message(self, status: int, last: str) -> str:
        """An error not worth retrying, naming the option most likely at fault."""
        if status in (401, 403):
            return f"generator.options.api_key_env: the server refused the key in ${self.options.api_key_env}; {last}"
        if status == 404:
            return f"generator.options.model: the server does not know model {self.options.model!r} (or the URL); {last}"
        return f"generator.options: the server refused the request (not retried); {last}"

    def _scrub(self, text: str) -> str:
        """``text`` with the key replaced (a server may echo what it was sent)."""
        return text.replace(self._key, "***") if self._key else text

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients:
            client.close()
