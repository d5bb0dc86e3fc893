"""An LLM as PE's foundation model for text (Aug-PE: Xie et al., ICML 2024, arXiv 2403.01749).

PE reaches the model only through the generator interface (:mod:`actors.generators.base`):

* ``random(labels, seed)``: one text per label from the class prompt ("Write a
  {class_name} review of about {target_words} words"), PE's draw from the public prior;
* ``variation(parents, degree, seed)``: one rewrite per parent, as in Aug-PE:
  - *fill-in-the-blanks*: a fraction ``degree * max_mask_fraction`` of the parent's
    words is replaced by a blank (``_``) and the model is asked to fill the blanks
    (Aug-PE masks each token with probability ``mlm_probability`` = the variation
    degree; here exactly ``round(fraction * words)`` words are masked, which gives the
    same mean with less spread);
  - *paraphrase*: the model rewrites the parent;
  - *mixed*: each row is a paraphrase with probability ``degree``, otherwise a
    fill-in at mask fraction ``degree * max_mask_fraction``; the draw is seeded per
    row, so a larger degree means both more paraphrases and more blanks.
  ``degree`` is a number in [0, 1] or one per parent.

Samples are Python strings (``SampleBatch.samples`` is a 1-D object array of str);
``params`` holds one small array, ``kind`` ("random", "paraphrase" or "fill_in"), so a
report can count what produced each text.

Two backends, one class, chosen by ``Options.backend``:

* **vLLM** (GPU; the ``[gpu]`` extra): ``LLM(model=path, tensor_parallel_size=tp,
  seed=0, dtype=dtype[, distributed_executor_backend="mp" when tp > 1])`` once, then
  ``llm.generate(prompts, [SamplingParams(n=1, temperature, top_p, max_tokens,
  seed=row_seed) ...], use_tqdm=False)`` for a whole shard (vLLM schedules its own
  batches) and ``RequestOutput.outputs[0].text``. Each row has its own seed, derived
  from the shard seed and the row index, so a retried shard reproduces its text
  (vLLM's per-request seeded sampling; bit-identical on the same GPU type and
  software versions).
* **transformers** (CPU anywhere, or a GPU without vLLM): ``AutoTokenizer`` and
  ``AutoModelForCausalLM`` from the local folder (``local_files_only``), prompts
  sorted by token length and cut into batches of ``batch_size`` that are left-padded
  to *that batch's* longest prompt, ``generate(do_sample=True, temperature, top_p,
  top_k=0, max_new_tokens)``, and only the new tokens decoded. Hugging Face sampling
  draws from torch's global RNG and ``generate`` takes no generator, so each batch
  runs inside ``torch.random.fork_rng`` after ``torch.manual_seed(batch_seed)``, the
  batch seed derived from the shard seed and the batch index: the same shard gives
  the same text on the same machine (same torch, same device), and the caller's RNG
  state is left as it was.

``backend: auto`` picks vLLM when it imports and the worker holds a GPU
(``context.device == "cuda"``), transformers otherwise.

Post-processing (both backends): whitespace collapsed, surrounding quotes removed,
the text cut to ``target_words`` words (at the last sentence end, when that keeps at
least half of them). An empty result is never returned: a variation
falls back to its parent (the sample survives unchanged, as in Aug-PE's
keep-on-failure), a random draw to ``empty_placeholder`` (default: the class name,
a public string that carries no private information).

An instruct model's chat template, when its tokenizer has one and ``chat_template``
is on, wraps each prompt as a single user turn.

torch, transformers and vllm are imported inside methods only: importing this
module and validating :class:`Options` is cheap (configs are checked in the driver
before any model is loaded or private byte read).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from privevo.actors.generators.base import GeneratorContext, SampleBatch
from privevo.actors.quiet_loading import quiet_model_loading

__all__ = [
    "VLLM_GENERATE_KWARGS",
    "LLMGenerator",
    "Options",
    "clean_text",
    "derive_seed",
    "left_pad",
    "mask_words",
    "resolve_backend",
    "vllm_engine_kwargs",
    "vllm_sampling_kwargs",
]

# Fields each template may use; every template that rewrites a parent must use {text}.
_TEMPLATE_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "random_prompt": (frozenset({"class_name", "target_words"}), frozenset()),
    "paraphrase_prompt": (frozenset({"class_name", "target_words", "text"}), frozenset({"text"})),
    "fill_in_prompt": (frozenset({"class_name", "target_words", "text", "blank"}), frozenset({"text"})),
    "empty_placeholder": (frozenset({"class_name"}), frozenset()),
}

# Seed streams: per-row sampling seeds (vLLM), per-batch seeds (transformers) and
# per-row prompt randomness (masking, mixed choice) never share a seed.
_STREAM_SAMPLE, _STREAM_BATCH, _STREAM_PROMPT = 0, 1, 2

# Keyword arguments of ``LLM.generate`` besides prompts and sampling params.
VLLM_GENERATE_KWARGS: dict[str, Any] = {"use_tqdm": False}


def _template_fields(template: str, name: str) -> set[str]:
    """The named fields of a ``str.format`` template; refuses positional or computed ones."""
    fields: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{name}: not a valid template ({exc}); write literal braces as {{{{ and }}}}") from exc
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ValueError(f"{name}: placeholder {{{field}}} is not allowed; use plain names like {{class_name}}")
        fields.add(field)
    return fields


def _check_template(template: str, name: str, allowed: frozenset[str], required: frozenset[str]) -> str:
    fields = _template_fields(template, name)
    unknown = fields - allowed
    if unknown:
        raise ValueError(
            f"{name}: unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    missing = required - fields
    if missing:
        raise ValueError(f"{name}: must contain {', '.join('{' + m + '}' for m in sorted(missing))}")
    return template


class Options(BaseModel, extra="forbid"):
    """Typed options of the ``llm`` generator (``generator.options`` in a run config)."""

    backend: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="vllm (GPU), transformers (CPU or GPU), or auto: vllm when it imports and the worker has a GPU"
    )
    model_path: str = Field(description="local folder of a Hugging Face causal LM (config.json, weights, tokenizer)")
    random_prompt: str = Field(
        "Write a {class_name} review of about {target_words} words.",
        description="prompt of random(); placeholders {class_name}, {target_words}",
    )
    prompts: dict[int, str] = Field(
        default_factory=dict, description="per-class random prompts (label -> template), overriding random_prompt"
    )
    variation: Literal["paraphrase", "fill_in", "mixed"] = Field(
        "fill_in", description="Aug-PE variation: paraphrase, fill_in (blanks), or mixed (paraphrase with probability degree)"
    )
    paraphrase_prompt: str = Field(
        "Rewrite this {class_name} review in your own words, in about {target_words} words:\n{text}",
        description="placeholders {class_name}, {target_words}, {text} (the parent)",
    )
    fill_in_prompt: str = Field(
        "Fill in the blanks ({blank}) in this {class_name} review and write out the whole review, "
        "about {target_words} words:\n{text}",
        description="placeholders {class_name}, {target_words}, {blank}, {text} (the masked parent)",
    )
    blank: str = Field("_", min_length=1, description="the blank that replaces a masked word")
    max_mask_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="fraction of words masked at degree 1 (fill-in masks degree * this)"
    )
    target_words: int = Field(64, ge=1, le=4096, description="target length in words: in prompts, and the cut")
    max_new_tokens: int | None = Field(
        None, ge=1, description="generation limit in tokens; default 2 * target_words"
    )
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="sampling temperature (> 0: PE needs random draws)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    batch_size: int = Field(32, ge=1, description="prompts per generate() call (transformers backend)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model (vLLM); the worker must hold as many")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="weights and activations; auto: the model's own on GPU, float32 on CPU"
    )
    chat_template: bool = Field(True, description="wrap prompts in the tokenizer's chat template when it has one")
    empty_placeholder: str = Field(
        "{class_name}", description="text of a random() draw that came back empty; placeholder {class_name}"
    )

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, value: str) -> str:
        path = Path(value).expanduser()
        if not path.exists():
            raise ValueError(
                f"model_path {value!r} does not exist (resolved to {path.resolve()}); "
                "download the model there ahead of the run (see the config's comments)"
            )
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ValueError(f"model_path {value!r} is not a Hugging Face model folder (no config.json in it)")
        return value

    @model_validator(mode="after")
    def _templates(self) -> Options:
        for name, (allowed, required) in _TEMPLATE_FIELDS.items():
            _check_template(getattr(self, name), name, allowed, required)
        allowed, required = _TEMPLATE_FIELDS["random_prompt"]
        for label, template in self.prompts.items():
            _check_template(template, f"prompts[{label}]", allowed, required)
        return self

    @property
    def new_tokens(self) -> int:
        """Tokens to generate per text: ``max_new_tokens``, or twice the target words."""
        return self.max_new_tokens if self.max_new_tokens is not None else 2 * self.target_words


# --------------------------------------------------------------------------- helpers


def derive_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed determined by ``seed`` and ``keys`` (e.g. stream and row index).

    Uses numpy's SeedSequence hashing, so nearby inputs give unrelated seeds.
    """
    sequence = np.random.SeedSequence(entropy=int(seed) % (1 << 64), spawn_key=tuple(int(k) for k in keys))
    return int(sequence.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


def _row_rng(seed: int, row: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed) % (1 << 64), spawn_key=(_STREAM_PROMPT, row)))


def mask_words(text: str, fraction: float, rng: np.random.Generator, blank: str = "_") -> str:
    """``text`` with ``round(fraction * words)`` of its words, chosen at random, replaced by ``blank``.

    Words are whitespace-separated tokens; the result is joined by single spaces.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"mask fraction must be in [0, 1], got {fraction}")
    words = text.split()
    count = round(fraction * len(words))
    if count:
        for i in rng.choice(len(words), size=count, replace=False):
            words[i] = blank
    return " ".join(words)


_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def clean_text(text: str, max_words: int) -> str:
    """Whitespace collapsed, surrounding quotes stripped, cut to at most ``max_words`` words.

    A cut text ends at its last sentence end ('.', '!', '?') when that keeps at least
    half of ``max_words``; otherwise at the word limit. May return "".
    """
    words = text.split()
    if len(words) > max_words:
        words = words[:max_words]
        shortest = (max_words + 1) // 2
        for i in range(len(words) - 1, shortest - 2, -1):
            if words[i].rstrip(_QUOTES + ")").endswith((".", "!", "?")):
                words = words[: i + 1]
                break
    out = " ".join(words)
    if len(out) >= 2 and out[0] in _QUOTES and out[-1] in _QUOTES:
        out = out[1:-1].strip()
    return out


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows left-padded to the longest row *of this batch*: (input_ids, attention_mask)."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return ids, mask


def _str_array(values: list[str]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(choice: str, device: str) -> str:
    """The backend ``choice`` means on a worker with ``device`` ("cpu" or "cuda")."""
    if choice in ("vllm", "transformers"):
        return choice
    if choice != "auto":
        raise ValueError(f"backend must be auto, vllm or transformers, got {choice!r}")
    return "vllm" if device == "cuda" and _vllm_importable() else "transformers"


def vllm_engine_kwargs(options: Options) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM(...)`` for these options.

    ``distributed_executor_backend`` is an ``EngineArgs`` field that ``LLM`` passes on
    through ``**kwargs``; "mp" (multiprocessing) is what a single-node Ray actor that
    holds ``num_gpus = tensor_parallel_size`` needs (vLLM would otherwise try to build
    its own Ray placement group inside ours).
    """
    kwargs: dict[str, Any] = {
        "model": str(Path(options.model_path).expanduser()),
        "tensor_parallel_size": options.tensor_parallel_size,
        "seed": 0,  # engine default only: every request carries its own seed
        "dtype": options.dtype,
    }
    if options.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"
    return kwargs


def vllm_sampling_kwargs(options: Options, seed: int) -> dict[str, Any]:
    """The keyword arguments of one request's ``vllm.SamplingParams(...)``."""
    return {
        "n": 1,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "max_tokens": options.new_tokens,
        "seed": int(seed),
    }


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


# --------------------------------------------------------------------------- backends


class _VLLMBackend:
    """One ``vllm.LLM`` for the life of the worker; a shard is one ``generate`` call."""

    def __init__(self, options: Options) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ImportError(
                "generator backend 'vllm' needs the vllm package (CUDA machines only): "
                "pip install 'privevo[gpu]', or set generator.options.backend to transformers"
            ) from exc
        self._options = options
        self._sampling_params = SamplingParams
        self.llm = LLM(**vllm_engine_kwargs(options))
        self.tokenizer = _load_tokenizer(str(Path(options.model_path).expanduser())) if options.chat_template else None

    def generate(self, prompts: list[str], seed: int) -> list[str]:
        if not prompts:
            return []
        params = [
            self._sampling_params(**vllm_sampling_kwargs(self._options, derive_seed(seed, _STREAM_SAMPLE, i)))
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(prompts, params, **VLLM_GENERATE_KWARGS)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [out.outputs[0].text if out.outputs else "" for out in outputs]


class _TransformersBackend:
    """A Hugging Face causal LM: per-batch padding, per-batch seeded sampling."""

    def __init__(self, options: Options, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        path = str(Path(options.model_path).expanduser())
        self._options = options
        self._device = device
        self.tokenizer = _load_tokenizer(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise ValueError(f"model_path {options.model_path!r}: the tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype: Any
        if options.dtype == "auto":
            dtype = torch.float32 if device == "cpu" else "auto"
        else:
            dtype = getattr(torch, options.dtype)
        quiet_model_loading()
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model.to(device)
        self.model.eval()

    def generate(self, prompts: list[str], seed: int, add_special_tokens: bool = True) -> list[str]:
        import torch

        if not prompts:
            return []
        tok = self.tokenizer
        rows = tok(prompts, add_special_tokens=add_special_tokens)["input_ids"]
        # Sorting by length keeps padding small; stable, so the batches of a shard are fixed.
        order = np.argsort([len(r) for r in rows], kind="stable")
        texts: list[str] = [""] * len(prompts)
        size = self._options.batch_size
        devices = [torch.cuda.current_device()] if self._device == "cuda" else []
        for batch, start in enumerate(range(0, len(order), size)):
            index = order[start : start + size]
            ids, mask = left_pad([rows[i] for i in index], tok.pad_token_id)
            input_ids = torch.from_numpy(ids).to(self._device)
            attention_mask = torch.from_numpy(mask).to(self._device)
            with torch.inference_mode(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(derive_seed(seed, _STREAM_BATCH, batch))
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=True,
                    temperature=self._options.temperature,
                    top_p=self._options.top_p,
                    top_k=0,  # off, as in vLLM: only temperature and top_p shape the draw
                    max_new_tokens=self._options.new_tokens,
                    pad_token_id=tok.pad_token_id,
                )
            decoded = tok.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
            for i, text in zip(index, decoded):
                texts[i] = text
        return texts


# --------------------------------------------------------------------------- generator


def text_generator_setup(model: type[BaseModel], options: Any, context: GeneratorContext | None
                         ) -> tuple[Any, GeneratorContext]:
    """A text generator's typed options (``options`` validated by ``model`` unless it is one already)
    and its context (a bare text context when none is given, as in tests)."""
    if not isinstance(options, model):
        options = model.model_validate(options)
    return options, context or GeneratorContext(modality="text", sample_shape=(), max_value=0.0, labels=(),
                                                class_names={})


class LLMGenerator:
    """PE's ``random`` and ``variation`` for text, on vLLM or transformers (see the module doc)."""

    modality = "text"
    Options = Options

    def __init__(self, options: Options, context: GeneratorContext | None = None) -> None:
        self.options, self.context = text_generator_setup(Options, options, context)
        options = self.options
        self.backend = resolve_backend(options.backend, self.context.device)
        if self.backend == "vllm":
            self._engine: Any = _VLLMBackend(options)
        else:
            self._engine = _TransformersBackend(options, self.context.device)
        tokenizer = self._engine.tokenizer
        self._chat = bool(options.chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None))

    # -- prompts

    def class_name(self, label: int) -> str:
        return self.context.class_names.get(int(label), f"class {int(label)}")

    def random_prompt(self, label: int) -> str:
        template = self.options.prompts.get(int(label), self.options.random_prompt)
        return template.format(class_name=self.class_name(label), target_words=self.options.target_words)

    def variation_prompt(self, label: int, text: str, degree: float, kind: str, rng: np.random.Generator) -> str:
        o = self.options
        name = self.class_name(label)
        if kind == "paraphrase":
            return o.paraphrase_prompt.format(class_name=name, target_words=o.target_words, text=text)
        masked = mask_words(text, degree * o.max_mask_fraction, rng, o.blank)
        return o.fill_in_prompt.format(class_name=name, target_words=o.target_words, text=masked, blank=o.blank)

    def complete(self, prompts: list[str], seed: int) -> list[str]:
        """One completion per prompt (the model's step under ``random`` and ``variation``; the
        api kind replaces it with HTTP calls)."""
        if self._chat:
            tok = self._engine.tokenizer
            prompts = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts
            ]
        if self.backend == "vllm":
            return self._engine.generate(prompts, seed)
        # A chat template writes the special tokens itself.
        return self._engine.generate(prompts, seed, add_special_tokens=not self._chat)

    # -- the generator interface

    def random(self, labels: np.ndarray, seed: int) -> SampleBatch:
        """One text per entry of ``labels``, from its class prompt."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        texts = self.complete([self.random_prompt(int(label)) for label in labels], seed)
        out = []
        for label, text in zip(labels, texts):
            text = clean_text(text, self.options.target_words)
            out.append(text or self.options.empty_placeholder.format(class_name=self.class_name(int(label))))
        kinds = np.full(len(labels), "random", dtype="<U10")
        return SampleBatch(labels=labels, samples=_str_array(out), params={"kind": kinds})

    def variation(self, parents: SampleBatch, degree: float | np.ndarray, seed: int) -> SampleBatch:
        """One rewrite per parent; ``degree`` in [0, 1], a number or one per parent."""
        n = len(parents)
        degrees = np.asarray(degree, dtype=np.float64)
        if degrees.ndim == 0:
            degrees = np.full(n, float(degrees))
        elif degrees.shape != (n,):
            raise ValueError(f"variation: {degrees.shape[0] if degrees.ndim == 1 else degrees.shape} degrees for {n} parents")
        if not np.all(np.isfinite(degrees)) or np.any(degrees < 0) or np.any(degrees > 1):
            raise ValueError("variation: degree must be in [0, 1]")
        parent_texts = [str(s) for s in parents.samples]
        prompts, kinds = [], []
        for i in range(n):
            rng = _row_rng(seed, i)
            kind = self.options.variation
            if kind == "mixed":
                kind = "paraphrase" if rng.random() < degrees[i] else "fill_in"
            kinds.append(kind)
            prompts.append(self.variation_prompt(int(parents.labels[i]), parent_texts[i], float(degrees[i]), kind, rng))
        texts = self.complete(prompts, seed)
        out = [clean_text(t, self.options.target_words) or parent for t, parent in zip(texts, parent_texts)]
        return SampleBatch(
            labels=parents.labels.copy(), samples=_str_array(out), params={"kind": np.array(kinds, dtype="<U10")}
        )
