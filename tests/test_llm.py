"""The LLM generator (Aug-PE random / variation) on CPU, and its vLLM backend's API surface.

The transformers backend runs a tiny random GPT-2 (tests/tiny_llm.py), fully offline.
vLLM cannot be installed here (CUDA only), so its backend is checked two ways:
against the real ``LLM`` / ``SamplingParams`` / ``RequestOutput`` when ``vllm``
imports, and otherwise (always, for the mechanics) through a strict stand-in whose
signatures are transcribed from vLLM's source.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from pydantic import ValidationError
from tiny_llm import build_tiny_causal_lm

from privevo.actors.generators.base import GeneratorContext, SampleBatch
from privevo.actors.generators.llm import (
    VLLM_GENERATE_KWARGS,
    LLMGenerator,
    Options,
    clean_text,
    derive_seed,
    left_pad,
    mask_words,
    resolve_backend,
    vllm_engine_kwargs,
    vllm_sampling_kwargs,
)

CLASSES = {0: "positive", 1: "negative"}
CPU = GeneratorContext(modality="text", sample_shape=(), max_value=0.0, labels=(0, 1), class_names=CLASSES)
CUDA = dataclasses.replace(CPU, device="cuda")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: torch's thread pool only adds contention on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generator(tiny_model) -> LLMGenerator:
    options = Options(backend="transformers", model_path=tiny_model, target_words=8, batch_size=4)
    return LLMGenerator(options, CPU)


def spy_prompts(monkeypatch, gen: LLMGenerator) -> list[list[str]]:
    """Record the prompts each backend call receives (the backend still runs)."""
    calls: list[list[str]] = []
    real = gen._engine.generate

    def spy(prompts, seed, **kwargs):
        calls.append(list(prompts))
        return real(prompts, seed, **kwargs)

    monkeypatch.setattr(gen._engine, "generate", spy)
    return calls


# --------------------------------------------------------------------------- options


def test_options_refuse_missing_model_path_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValidationError) as info:
        Options(model_path=str(missing), random_prompt="Write a {class_name} review:")
    assert str(missing) in str(info.value)
    assert "model_path" in str(info.value)


def test_options_refuse_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ValidationError, match="config.json"):
        Options(model_path=str(tmp_path))


def test_options_refuse_unknown_fields_and_bad_templates(tiny_model):
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        Options(model_path=tiny_model, max_length=30)
    with pytest.raises(ValidationError, match="unknown placeholder"):
        Options(model_path=tiny_model, random_prompt="Write a {label} review:")
    with pytest.raises(ValidationError, match=r"\{text\}"):
        Options(model_path=tiny_model, paraphrase_prompt="Rewrite this {class_name} review:")
    with pytest.raises(ValidationError, match=r"prompts\[1\]"):
        Options(model_path=tiny_model, prompts={1: "A {colour} review:"})
    with pytest.raises(ValidationError, match="variation"):
        Options(model_path=tiny_model, variation="rephrase")
    ok = Options(model_path=tiny_model, prompts={"1": "A {class_name} one:"}, variation="mixed")
    assert ok.prompts == {1: "A {class_name} one:"} and ok.new_tokens == 2 * ok.target_words


def test_import_and_validation_load_no_model_library(tiny_model):
    code = (
        "import sys\n"
        "from privevo.actors.generators.worker import validate_generator_options\n"
        f"validate_generator_options('llm', {{'model_path': {tiny_model!r}, 'backend': 'vllm'}})\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


# --------------------------------------------------------------------------- transformers backend


def test_random_and_variation_return_one_text_per_row(generator):
    labels = np.array([0, 1, 1, 0, 1])
    batch = generator.random(labels, seed=1)
    assert len(batch) == 5 and batch.samples.dtype == object and batch.samples.shape == (5,)
    np.testing.assert_array_equal(batch.labels, labels)
    assert all(isinstance(s, str) and s.strip() for s in batch.samples)
    assert all(len(s.split()) <= 8 for s in batch.samples)
    assert list(batch.params["kind"]) == ["random"] * 5

    var = generator.variation(batch, 0.5, seed=2)
    assert len(var) == 5 and var.samples.dtype == object
    np.testing.assert_array_equal(var.labels, labels)
    assert all(isinstance(s, str) and s.strip() for s in var.samples)
    assert set(var.params["kind"]) == {"fill_in"}
    # batches from both calls concatenate (same params names)
    assert len(SampleBatch.concat([batch, var])) == 10


def test_same_seed_same_text_other_seed_other_text(generator):
    labels = np.array([0, 1, 0, 1, 0, 1])
    a, b, c = (generator.random(labels, seed=s).samples for s in (11, 11, 12))
    assert list(a) == list(b)
    assert list(a) != list(c)
    parents = generator.random(labels, seed=5)
    v1, v2, v3 = (generator.variation(parents, 0.4, seed=s).samples for s in (21, 21, 22))
    assert list(v1) == list(v2)
    assert list(v1) != list(v3)


def test_seeding_leaves_the_global_torch_rng_alone(generator):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generator.random(np.array([0, 1]), seed=3)
    assert torch.equal(torch.rand(3), expected)


def test_batches_are_padded_to_their_own_longest_prompt(tiny_model, monkeypatch):
    options = Options(
        backend="transformers",
        model_path=tiny_model,
        target_words=4,
        max_new_tokens=3,
        batch_size=2,
        prompts={0: "Hi {class_name}:", 1: "Write a very long and detailed {class_name} restaurant review " * 4},
    )
    gen = LLMGenerator(options, CPU)
    shapes = []
    real = gen._engine.model.generate

    def spy(**kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        shapes.append((ids.shape[1], int(mask.sum(dim=1).max()), bool(mask[:, -1].all())))
        return real(**kwargs)

    monkeypatch.setattr(gen._engine.model, "generate", spy)
    gen.random(np.array([1, 0, 1, 0]), seed=0)
    assert len(shapes) == 2
    for width, longest, right_aligned in shapes:
        assert width == longest  # padded to this batch's longest prompt, no further
        assert right_aligned  # left padding: every prompt ends at the last column
    assert shapes[0][0] != shapes[1][0]  # short and long prompts went to different batches


def test_left_pad_pads_on_the_left_to_the_batch_maximum():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 8], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1], [0, 0, 0]])


def test_empty_generations_fall_back(generator, monkeypatch):
    monkeypatch.setattr(generator._engine, "generate", lambda prompts, seed, **kw: ["", "  \n "][: len(prompts)])
    rand = generator.random(np.array([0, 1]), seed=0)
    assert list(rand.samples) == ["positive", "negative"]  # the class-name placeholder
    parents = SampleBatch(labels=np.array([0, 1]), samples=np.array(["good food", "cold soup"], dtype=object))
    var = generator.variation(parents, 0.5, seed=0)
    assert list(var.samples) == ["good food", "cold soup"]  # the parent survives


def test_clean_text_cuts_at_the_target_length():
    assert clean_text('  "Great   place.\n Loved it"  ', 10) == "Great place. Loved it"
    long = "one two three. four five six seven eight nine ten"
    assert clean_text(long, 6) == "one two three."  # last sentence end, keeping >= half
    early = "One. two three four five six seven eight"
    assert clean_text(early, 6) == "One. two three four five six"  # too early to cut there
    assert clean_text("a b c d e f g h", 5) == "a b c d e"
    assert clean_text("   ", 5) == ""


# --------------------------------------------------------------------------- variation degree


def test_mask_fraction_follows_degree_times_max():
    text = " ".join(f"w{i}" for i in range(200))
    rng = np.random.default_rng(0)
    fractions = []
    for fraction in (0.0, 0.1, 0.3, 0.6, 0.9, 1.0):
        masked = mask_words(text, fraction, rng)
        words = masked.split()
        assert len(words) == 200
        fractions.append(words.count("_") / 200)
        assert abs(fractions[-1] - fraction) <= 1 / 200
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    with pytest.raises(ValueError):
        mask_words(text, 1.5, rng)


def test_fill_in_prompts_blank_more_words_at_larger_degree(tiny_model, monkeypatch):
    options = Options(
        backend="transformers",
        model_path=tiny_model,
        target_words=4,
        max_new_tokens=2,
        batch_size=8,
        max_mask_fraction=0.5,
        fill_in_prompt="Fill {blank}: {text}",
    )
    gen = LLMGenerator(options, CPU)
    calls = spy_prompts(monkeypatch, gen)
    parent = " ".join(f"w{i}" for i in range(100))
    parents = SampleBatch(labels=np.zeros(4, dtype=np.int64), samples=np.array([parent] * 4, dtype=object))
    blanks = {}
    for degree in (0.2, 0.8, 1.0):
        gen.variation(parents, degree, seed=9)
        blanks[degree] = [p.split()[2:].count("_") for p in calls[-1]]
    assert blanks[0.2] == [10] * 4  # 100 words * 0.2 * 0.5
    assert blanks[0.8] == [40] * 4
    assert blanks[1.0] == [50] * 4  # degree 1 masks max_mask_fraction

    # one degree per parent
    gen.variation(parents, np.array([0.0, 0.2, 0.6, 1.0]), seed=9)
    assert [p.split()[2:].count("_") for p in calls[-1]] == [0, 10, 30, 50]
    with pytest.raises(ValueError, match="degrees for 4 parents"):
        gen.variation(parents, np.array([0.1, 0.2]), seed=9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gen.variation(parents, 1.5, seed=9)


def test_mixed_variation_paraphrases_with_probability_degree(tiny_model, monkeypatch):
    options = Options(
        backend="transformers", model_path=tiny_model, variation="mixed", target_words=4, max_new_tokens=1, batch_size=64
    )
    gen = LLMGenerator(options, CPU)
    monkeypatch.setattr(gen._engine, "generate", lambda prompts, seed, **kw: ["x"] * len(prompts))
    parents = SampleBatch(labels=np.zeros(400, dtype=np.int64), samples=np.array(["a b c d"] * 400, dtype=object))
    share = {d: np.mean(gen.variation(parents, d, seed=1).params["kind"] == "paraphrase") for d in (0.0, 0.25, 1.0)}
    assert share[0.0] == 0.0 and share[1.0] == 1.0
    assert 0.18 < share[0.25] < 0.32


def test_chat_template_wraps_prompts(tiny_model, tmp_path, monkeypatch):
    import shutil

    from transformers import AutoTokenizer

    chat_model = tmp_path / "chat"
    shutil.copytree(tiny_model, chat_model)
    tok = AutoTokenizer.from_pretrained(str(chat_model), local_files_only=True)
    tok.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<assistant>"
    tok.save_pretrained(str(chat_model))
    gen = LLMGenerator(Options(backend="transformers", model_path=str(chat_model), max_new_tokens=2), CPU)
    calls = spy_prompts(monkeypatch, gen)
    gen.random(np.array([1]), seed=0)
    assert calls[-1] == ["<user>Write a negative review of about 64 words.</user><assistant>"]
    plain = LLMGenerator(
        Options(backend="transformers", model_path=str(chat_model), max_new_tokens=2, chat_template=False), CPU
    )
    calls = spy_prompts(monkeypatch, plain)
    plain.random(np.array([1]), seed=0)
    assert calls[-1] == ["Write a negative review of about 64 words."]


def test_backend_choice():
    assert resolve_backend("transformers", "cuda") == "transformers"
    assert resolve_backend("vllm", "cpu") == "vllm"
    assert resolve_backend("auto", "cpu") == "transformers"


# --------------------------------------------------------------------------- vLLM
#
# The stand-in below transcribes vLLM's public offline API, strictly (no **kwargs),
# so a keyword vLLM does not take fails here as it would on a GPU machine:
# * LLM.__init__ and LLM.generate: vllm/entrypoints/llm.py, vllm-project/vllm at
#   commit 10fdb8f0d75a3ad1122b87020f1359d3fc51f2ca (the V1-engine API, 2026; the
#   file names no version). Real LLM.__init__ ends in **kwargs, forwarded to
#   EngineArgs; the one EngineArgs field we use, distributed_executor_backend
#   (vllm/engine/arg_utils.py, "ray" or "mp"), is spelled out instead.
# * SamplingParams fields: vllm/sampling_params.py at commit
#   db573835d3ef40643442e0817059e087355cf458 (a msgspec.Struct; the five we use,
#   n / temperature / top_p / max_tokens / seed, are unchanged in later versions).
# * RequestOutput / CompletionOutput: vllm/outputs.py at commit
#   72a8dbfa388468c88b0046b5d8944c0a095f9bc8 (later versions add fields after these).


def _stand_in_vllm() -> types.ModuleType:
    @dataclasses.dataclass
    class CompletionOutput:
        index: int
        text: str
        token_ids: list
        cumulative_logprob: float
        logprobs: object
        finish_reason: str | None = None
        stop_reason: int | str | None = None
        lora_request: object = None

    class RequestOutput:
        def __init__(
            self,
            request_id: str,
            prompt: str | None,
            prompt_token_ids: list,
            prompt_logprobs: object,
            outputs: list,
            finished: bool,
            metrics: object = None,
            lora_request: object = None,
        ) -> None:
            self.request_id = request_id
            self.prompt = prompt
            self.prompt_token_ids = prompt_token_ids
            self.prompt_logprobs = prompt_logprobs
            self.outputs = outputs
            self.finished = finished
            self.metrics = metrics
            self.lora_request = lora_request

    @dataclasses.dataclass(kw_only=True)
    class SamplingParams:
        n: int = 1
        best_of: int | None = None
        presence_penalty: float = 0.0
        frequency_penalty: float = 0.0
        repetition_penalty: float = 1.0
        temperature: float = 1.0
        top_p: float = 1.0
        top_k: int = -1
        min_p: float = 0.0
        seed: int | None = None
        stop: object = None
        stop_token_ids: object = None
        ignore_eos: bool = False
        max_tokens: int | None = 16
        min_tokens: int = 0
        logprobs: int | None = None
        prompt_logprobs: int | None = None
        detokenize: bool = True
        skip_special_tokens: bool = True
        spaces_between_special_tokens: bool = True
        logits_processors: object = None
        include_stop_str_in_output: bool = False
        truncate_prompt_tokens: int | None = None
        output_kind: object = None
        guided_decoding: object = None
        logit_bias: object = None
        allowed_token_ids: object = None

        def __post_init__(self) -> None:  # the checks of SamplingParams._verify_args we could hit
            if not isinstance(self.n, int) or self.n < 1:
                raise ValueError(f"n must be an int >= 1, got {self.n!r}")
            if self.temperature < 0.0:
                raise ValueError(f"temperature must be non-negative, got {self.temperature}")
            if not 0.0 < self.top_p <= 1.0:
                raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
            if self.max_tokens is not None and self.max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
            if self.seed is not None and not isinstance(self.seed, int):
                raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")

    class LLM:
        instances: ClassVar[list] = []

        def __init__(
            self,
            model: str,
            *,
            runner: str = "auto",
            convert: str = "auto",
            tokenizer: str | None = None,
            tokenizer_mode: str = "auto",
            skip_tokenizer_init: bool = False,
            trust_remote_code: bool = False,
            allowed_local_media_path: str = "",
            allowed_media_domains: list | None = None,
            tensor_parallel_size: int = 1,
            dtype: str = "auto",
            quantization: str | None = None,
            revision: str | None = None,
            tokenizer_revision: str | None = None,
            seed: int = 0,
            gpu_memory_utilization: float = 0.9,
            swap_space: float = 4,
            cpu_offload_gb: float = 0,
            enforce_eager: bool = False,
            enable_return_routed_experts: bool = False,
            disable_custom_all_reduce: bool = False,
            hf_token: bool | str | None = None,
            hf_overrides: object = None,
            mm_processor_kwargs: dict | None = None,
            pooler_config: object = None,
            structured_outputs_config: object = None,
            profiler_config: object = None,
            attention_config: object = None,
            kv_cache_memory_bytes: int | None = None,
            compilation_config: object = None,
            logits_processors: list | None = None,
            distributed_executor_backend: str | None = None,  # EngineArgs, via **kwargs
        ) -> None:
            assert dtype in ("auto", "half", "float16", "bfloat16", "float", "float32")  # ModelDType
            assert Path(model).is_dir()
            self.init_args = {
                "model": model, "tensor_parallel_size": tensor_parallel_size, "seed": seed, "dtype": dtype,
                "distributed_executor_backend": distributed_executor_backend,
            }
            self.calls: list = []
            LLM.instances.append(self)

        def generate(
            self,
            prompts,
            sampling_params=None,
            *,
            use_tqdm=True,
            lora_request=None,
            priority=None,
            tokenization_kwargs=None,
        ) -> list:
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
            assert len(params) == len(prompts), "a list of SamplingParams pairs one to one with the prompts"
            self.calls.append((prompts, params, use_tqdm))
            outputs = []
            for i, (prompt, sp) in enumerate(zip(prompts, params)):
                rng = np.random.default_rng(sp.seed)  # a seeded request reproduces its text
                completions = [
                    CompletionOutput(k, f" completion-{sp.seed} " + " ".join(f"t{w}" for w in rng.integers(0, 99, 5)),
                                     [1, 2], -1.0, None, "length")
                    for k in range(sp.n)
                ]
                outputs.append(RequestOutput(str(i), prompt, [0], None, completions, True))
            return outputs

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    module.RequestOutput, module.CompletionOutput = RequestOutput, CompletionOutput
    return module


def _real_vllm():
    try:
        import vllm
    except ImportError:
        return None
    return vllm


@pytest.fixture
def stand_in_vllm(monkeypatch) -> types.ModuleType:
    module = _stand_in_vllm()
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_every_vllm_keyword_we_pass_is_accepted(tiny_model):
    options = Options(backend="vllm", model_path=tiny_model, tensor_parallel_size=2, dtype="bfloat16")
    engine_kwargs = vllm_engine_kwargs(options)
    sampling_kwargs = vllm_sampling_kwargs(options, seed=derive_seed(3, 0, 1))
    assert engine_kwargs["distributed_executor_backend"] == "mp" and engine_kwargs["tensor_parallel_size"] == 2
    assert "distributed_executor_backend" not in vllm_engine_kwargs(options.model_copy(update={"tensor_parallel_size": 1}))
    assert sampling_kwargs["n"] == 1

    vllm = _real_vllm()
    if vllm is not None:  # the real thing: every keyword by name
        from vllm.engine.arg_utils import EngineArgs

        llm_params = inspect.signature(vllm.LLM.__init__).parameters
        engine_fields = {f.name for f in dataclasses.fields(EngineArgs)}
        for name in engine_kwargs:
            assert name in llm_params or name in engine_fields, f"vllm.LLM takes no {name!r}"
        fields = getattr(vllm.SamplingParams, "__struct_fields__", None) or inspect.signature(vllm.SamplingParams).parameters
        for name in sampling_kwargs:
            assert name in fields, f"vllm.SamplingParams has no {name!r}"
        generate = inspect.signature(vllm.LLM.generate).parameters
        for name in VLLM_GENERATE_KWARGS:
            assert name in generate, f"vllm.LLM.generate takes no {name!r}"
        assert "outputs" in inspect.signature(vllm.RequestOutput.__init__).parameters
        assert "text" in {f.name for f in dataclasses.fields(vllm.CompletionOutput)}
        vllm.SamplingParams(**sampling_kwargs)  # and the values pass its checks
    else:  # the transcribed stand-in, which has no **kwargs to hide a wrong name
        stand_in = _stand_in_vllm()
        inspect.signature(stand_in.LLM).bind(**engine_kwargs)
        stand_in.SamplingParams(**sampling_kwargs)
        inspect.signature(stand_in.LLM.generate).bind(None, ["p"], [None], **VLLM_GENERATE_KWARGS)
    # the stand-in is strict: a wrong keyword fails as vLLM would
    with pytest.raises(TypeError):
        _stand_in_vllm().SamplingParams(max_new_tokens=5)


def test_vllm_backend_end_to_end_through_the_stand_in(tiny_model, stand_in_vllm):
    options = Options(
        backend="auto", model_path=tiny_model, tensor_parallel_size=2, target_words=5, temperature=0.9, top_p=0.95
    )
    gen = LLMGenerator(options, CUDA)  # auto + GPU + vllm importable -> vllm
    assert gen.backend == "vllm"
    llm = stand_in_vllm.LLM.instances[-1]
    assert llm.init_args == {
        "model": tiny_model, "tensor_parallel_size": 2, "seed": 0, "dtype": "auto", "distributed_executor_backend": "mp"
    }

    labels = np.array([0, 1, 1, 0])
    batch = gen.random(labels, seed=42)
    prompts, params, use_tqdm = llm.calls[-1]
    assert len(llm.calls) == 1 and len(prompts) == 4 and use_tqdm is False  # one call per shard
    assert prompts[1] == "Write a negative review of about 5 words."
    assert all(p.n == 1 and p.temperature == 0.9 and p.top_p == 0.95 and p.max_tokens == 10 for p in params)
    seeds = [p.seed for p in params]
    assert seeds == [derive_seed(42, 0, i) for i in range(4)] and len(set(seeds)) == 4  # per request
    # parsed from RequestOutput.outputs[0].text, cleaned and cut to target_words
    assert list(batch.samples) == [clean_text(o, 5) for o in _texts(llm, prompts, params)]
    assert batch.samples[0].startswith(f"completion-{seeds[0]}")
    np.testing.assert_array_equal(batch.labels, labels)

    # a retried shard reproduces its text; another seed changes it
    assert list(gen.random(labels, seed=42).samples) == list(batch.samples)
    assert list(gen.random(labels, seed=43).samples) != list(batch.samples)

    var = gen.variation(batch, np.array([0.5, 0.5, 1.0, 0.2]), seed=7)
    prompts, params, _ = llm.calls[-1]
    assert len(var) == 4 and all("_" in p for p in prompts)  # fill-in, the default
    assert [p.seed for p in params] == [derive_seed(7, 0, i) for i in range(4)]
    np.testing.assert_array_equal(var.labels, labels)


def _texts(llm, prompts, params):
    return [out.outputs[0].text for out in llm.generate(prompts, params, use_tqdm=False)]


def test_vllm_backend_without_vllm_says_how_to_install(tiny_model, monkeypatch):
    if _real_vllm() is not None:
        pytest.skip("vllm is installed")
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"privevo\[gpu\]"):
        LLMGenerator(Options(backend="vllm", model_path=tiny_model), CUDA)
    assert resolve_backend("auto", "cuda") == "transformers"
