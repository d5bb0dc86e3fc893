"""Property-based fuzzing of everything a user, a script or a cluster can hand privevo (issue 15).

Hypothesis generates (a) ``--set`` overrides and config files touching every field of
``privevo.RunConfig`` with valid and invalid values, (b) corrupted private data of each kind
(npz arrays, parquet shards, image folders, CSV text tables) and (c) audit configs. Every case
goes through the command, ``privevo.pipelines.cli.main``, and must end one of two ways:

* it runs (a tiny run: the in-process engine, one generation, seeded noise) and exits 0 with
  its ledger; or
* it is refused: exit code 2, exactly one line on stderr, ``privevo: error: FILE: FIELD: ...``,
  no traceback, and no run directory left behind (so no release was drawn).

An invalid value (one its field's type or bounds forbid) must be refused naming that field.
Never exit 1 (an unexpected error), never a traceback.

Accepted audit configs stop where the audit would start Ray (``ensure_ray`` is replaced): every
check an audit makes before it trains runs, and the audit's own tests run real ones.

The examples are derandomized (the same cases on every CI run, so the file's time is stable);
``PRIVEVO_FUZZ_SCALE=10`` runs ten times as many, and ``PRIVEVO_FUZZ_RANDOM=1`` new ones each
time, for a longer hunt. The number of cases each property ran is printed in pytest's summary
(``tests/conftest.py``) and checked by the last test of this file.
"""

from __future__ import annotations

import contextlib
import functools
import csv
import io
import json
import os
import tempfile
import typing
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import BaseModel

from privevo.pipelines.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
SEED_WARNING = "WARNING: PRIVEVO_INSECURE_NOISE_SEED is set"
SCALE = float(os.environ.get("PRIVEVO_FUZZ_SCALE", "1"))
#: How many cases each property ran, by outcome (``tests/conftest.py`` prints it).
CASES: Counter = Counter()


def fuzz_settings(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    derandomize=not os.environ.get("PRIVEVO_FUZZ_RANDOM"), print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """Seeded noise (runs are tests), owner-only data-error files in a temporary folder, and no
    plots (drawing them was 90% of a tiny run; what is fuzzed is whether a run starts at all)."""
    from privevo.pipelines import report

    saved = {k: os.environ.get(k) for k in ("PRIVEVO_INSECURE_NOISE_SEED", "PRIVEVO_PRIVATE_DIR")}
    os.environ["PRIVEVO_INSECURE_NOISE_SEED"] = "11"
    os.environ["PRIVEVO_PRIVATE_DIR"] = str(tmp_path_factory.mktemp("owner"))
    _digits()  # loaded once, outside any strategy (loading it touches the global random module)
    with pytest.MonkeyPatch.context() as patch:
        for plot in ("plot_samples", "plot_progress", "plot_cost"):
            patch.setattr(report, plot, lambda *args, **kwargs: None)
        yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


#: Every run is tiny: one generation, the in-process engine, small populations.
TINY = ["generations=1", "resources.engine=in_process", "population.per_class=8", "population.final_per_class=8",
        "population.shard_size=8", "evaluation.classifier=logreg", "evaluation.every_generation=false"]


def run_cli(argv: list[str]) -> tuple[int, list[str], str]:
    """``privevo ARGV`` in this process: (exit code, stderr lines but the seeded-noise warning, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
    text = err.getvalue()
    return code, [line for line in text.splitlines() if line.strip() and not line.startswith(SEED_WARNING)], text


def outcome(kind: str, argv: list[str], run_dir: Path, sources: tuple[str, ...]) -> tuple[str, str | None]:
    """Run ``argv``; assert it ran or was refused well. Returns ("ran", None) or ("refused", FIELD)."""
    code, lines, text = run_cli(argv)
    assert "Traceback" not in text, text
    if code == 0:
        assert (run_dir / "ledger.jsonl").is_file() and (run_dir / "report.json").is_file(), text
        assert not any(line.startswith("privevo: error") for line in lines), lines  # (a model's own load bar may show)
        CASES[kind, "ran"] += 1
        return "ran", None
    assert code == 2, f"exit {code}, expected 0 or 2:\n{text}"
    assert len(lines) == 1, lines
    (line,) = lines
    source = next((s for s in sources if line.startswith(f"privevo: error: {s}: ")), None)
    assert source is not None, f"not 'privevo: error: FILE: FIELD: ...' for {sources}: {line}"
    field, sep, message = line.removeprefix(f"privevo: error: {source}: ").partition(": ")
    assert sep and field and message.strip(), line
    assert not run_dir.exists(), f"{run_dir} left behind by a refusal: {sorted(p.name for p in run_dir.iterdir())}"
    CASES[kind, "refused"] += 1
    return "refused", field


# --------------------------------------------------------------------------- (a) configs and --set


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, typing.Any]:
    """Every leaf field of ``model`` (nested sections walked), by dotted name."""
    out = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_leaves(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = info
    return out


def _run_config():
    import privevo

    return privevo.RunConfig


LEAVES = _leaves(_run_config())
_name = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
_small_float = st.floats(0.01, 4.0).map(lambda v: round(v, 3))
_dict_of = lambda keys, values: st.dictionaries(st.sampled_from(keys), values, max_size=3)  # noqa: E731
_any_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | _name,
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_name, inner, max_size=2),
                         max_leaves=5)

#: Values each field can take that keep a run tiny (a valid value may still be refused by another
#: check: vote.k above population.per_class, delta against the public size, a generator without
#: its model, the wrong modality...). resources.engine stays in_process (a run must not start Ray),
#: vote.embedding_store off or auto (on would embed ahead through Ray).
VALID = {
    "name": _name,
    "seed": st.integers(0, 2**70),
    "generations": st.integers(1, 2),
    "generators": st.integers(1, 3),
    "privacy.epsilon": st.sampled_from([1e-6, 0.05, 0.5, 1.0, 8.0, 1e9]) | st.floats(0.01, 100),
    "privacy.delta": st.sampled_from([1e-12, 1e-5, 1e-3, 0.5]) | st.floats(1e-10, 0.999),
    "privacy.neighbour": st.sampled_from(["add_remove", "replace"]),
    "data.kind": st.sampled_from(["digits", "image_folder", "text_table", "arrays", "parquet_shards"]),
    "data.path": st.sampled_from([DIGITS, str(ROOT / "configs"), "/nonexistent/privevo-fuzz"]),
    "data.class_names": st.just([str(d) for d in range(10)]) | st.lists(_name, min_size=1, max_size=4),
    "data.labels": st.lists(st.integers(-2, 11), min_size=0, max_size=4),
    "data.heldout": st.sampled_from(["none", "split", "path"]),
    "data.heldout_path": st.sampled_from([DIGITS, "/nonexistent/privevo-fuzz"]),
    "data.heldout_fraction": st.floats(0.01, 0.99),
    "data.split_seed": st.integers(0, 2**64 - 1),
    "data.public_size": st.integers(1, 10**6),
    "data.image_size": st.lists(st.integers(1, 40), min_size=2, max_size=2),
    "data.channels": st.sampled_from([1, 3]),
    "data.text_column": _name,
    "data.label_column": _name,
    "data.image_column": _name,
    "population.per_class": st.integers(1, 16),
    "population.final_per_class": st.integers(1, 16),
    "population.shard_size": st.integers(1, 40),
    "variation.degree_start": st.floats(0.01, 1.0),
    "variation.degree_end": st.floats(0.01, 1.0),
    "variation.schedule": st.sampled_from(["geometric", "linear", "constant"]),
    "variation.final_degree": st.floats(0.0, 1.0),
    "vote.k": st.integers(1, 4),
    "vote.threshold": st.floats(0.0, 5.0),
    "vote.lookahead": st.integers(0, 2),
    "vote.selection": st.sampled_from(["sample", "rank"]),
    "vote.knn_backend": st.sampled_from(["faiss", "numpy", "torch"]),
    "vote.query_chunk": st.integers(16, 100_000),
    "vote.db_chunk": st.integers(16, 100_000),
    "vote.embedding_store": st.sampled_from(["off", "auto"]),
    "generator.kind": st.sampled_from(["simulator", "diffusion", "llm", "api", "public_data"]),
    "generator.options": _dict_of(["format", "invert", "supersample", "fonts", "path", "model_path", "colour"],
                                  st.sampled_from(["auto", "optdigits", "mnist", "resize", True, False, 1, 2, 0, -3,
                                                   "/nonexistent", None, [], "x"])),
    "embedder.kind": st.sampled_from(["pixels", "inception", "clip", "sentence_transformer"]),
    "embedder.options": _dict_of(["model_path", "batch_size", "normalize", "size"], _any_json),
    "evaluation.classifier": st.sampled_from(["svc", "logreg", "knn"]),
    "evaluation.features": st.sampled_from(["pixels", "embedding"]),
    "evaluation.every_generation": st.booleans(),
    "evaluation.real_baseline": st.booleans(),
    "resources.engine": st.just("in_process"),
    "resources.num_cpus": st.none() | st.integers(1, 64),
    "resources.generator_cpus": _small_float,
    "resources.voter_cpus": _small_float,
    "resources.voter_shards": st.integers(1, 3),
    "resources.voter_split": st.sampled_from(["classes", "samples"]),
    "resources.embed_actors": st.none() | st.integers(1, 3),
    "resources.generator_gpus": st.sampled_from([0, 0.0, 0.5, 1]),
    "resources.voter_gpus": st.sampled_from([0, 0.0, 0.5, 1]),
    "resources.placement": st.sampled_from(["pack", "spread", "strict_pack", "strict_spread"]),
    "resources.placement_timeout_s": st.floats(0.1, 1000.0),
}


def _bounds(info) -> dict[str, float]:
    out = {}
    for item in info.metadata:
        for key in ("gt", "ge", "lt", "le"):
            if getattr(item, key, None) is not None:
                out[key] = getattr(item, key)
    return out


def _invalid(key: str) -> st.SearchStrategy:
    """Values the field's type or bounds forbid: it must be refused naming ``key``."""
    info = LEAVES[key]
    ann = info.annotation
    optional = type(None) in typing.get_args(ann)
    base = next((a for a in typing.get_args(ann) if a is not type(None)), ann) if optional else ann
    origin = typing.get_origin(base)
    bad: list[st.SearchStrategy] = [st.just({"nested": 1})]
    bounds = _bounds(info)
    if base in (int, float):
        bad.append(st.sampled_from(["many", "1e3x", [1, 2]]))
        if base is int:
            bad.append(st.sampled_from([1.5, -0.25]))
        if "ge" in bounds:
            bad.append(st.just(bounds["ge"] - 1))
        if "gt" in bounds:
            bad.append(st.sampled_from([bounds["gt"], bounds["gt"] - 1]))
        if "lt" in bounds:
            bad.append(st.just(bounds["lt"]))
        if "le" in bounds:
            bad.append(st.just(bounds["le"] + 1))
        if base is float and bounds:
            bad.append(st.just(float("nan")))
    elif origin is typing.Literal:
        bad.append(_name.filter(lambda v: v not in typing.get_args(base)))
        bad.append(st.just([typing.get_args(base)[0]]))
    elif base is bool:
        bad.append(st.sampled_from(["maybe", [True], 2]))
    elif base is str:
        bad.append(st.sampled_from([[1, 2], 5, 2.5, True]))
    elif origin is list:
        bad.append(st.sampled_from(["abc", 7, [[1]], [{"a": 1}]]))
    elif origin is dict:
        bad.append(st.sampled_from(["abc", 7, [1, 2]]))
    if not optional and info.default is not None:
        bad.append(st.none())
    return st.one_of(bad)


def _yaml(value) -> str:
    """``value`` as the YAML text of a --set (flow style, one line)."""
    if isinstance(value, float):
        return ".nan" if value != value else (".inf" if value == float("inf") else repr(value))
    return json.dumps(value)


@st.composite
def override(draw):
    """One --set: (text, key, expectation) with expectation "any" (either outcome) or "refused"."""
    key = draw(st.sampled_from(sorted(LEAVES)))
    how = draw(st.sampled_from(["valid", "valid", "invalid", "invalid", "invalid", "unknown", "syntax"]))
    if how == "valid":
        return f"{key}={_yaml(draw(VALID[key]))}", key, "any"
    if how == "invalid":
        return f"{key}={_yaml(draw(_invalid(key)))}", key, "refused"
    if how == "unknown":
        section = key.rpartition(".")[0]
        extra = draw(_name.filter(lambda n: n not in LEAVES and f"{section}.{n}" not in LEAVES and n not in (
            "privacy", "data", "population", "variation", "vote", "generator", "embedder", "evaluation", "resources")))
        unknown = f"{section}.{extra}" if section else extra
        return f"{unknown}={_yaml(draw(VALID[key]))}", unknown, "refused"
    # "bad_yaml" (a value that is not YAML) is left out: test_a_set_value_that_is_not_yaml_is_one_line
    form = draw(st.sampled_from(["no_equals", "empty_part", "not_section", "section_scalar"]))
    if form == "no_equals":
        return key, key, "refused"
    if form == "empty_part":
        return f"{key}..x=1", f"{key}..x", "refused"
    if form == "not_section":
        return f"{key}.deeper=1", key, "refused"
    if form == "bad_yaml":
        return f"{key}=[1, 2", key, "refused"
    section = key.partition(".")[0] if "." in key else "privacy"
    return f"{section}=3", section, "refused"


def test_the_fuzzed_fields_are_every_field_of_run_config():
    """A field added to RunConfig must be added to the fuzz catalogue (its valid, cheap values)."""
    assert sorted(VALID) == sorted(LEAVES)


@fuzz_settings(120)
@given(sets=st.lists(override(), min_size=1, max_size=3, unique_by=lambda s: s[1]))
def test_set_overrides_run_or_are_refused_naming_the_field(sets):
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        argv = ["synthesize", DIGITS, "--out", str(run_dir), "--quiet"]
        for item in TINY:
            argv += ["--set", item]
        for text, _, _ in sets:
            argv += ["--set", text]
        got, field = outcome("--set", argv, run_dir, (DIGITS,))
        if any(expect == "refused" for _, _, expect in sets):
            assert got == "refused", f"ran with {sets}"
            # the first problem is named: an invalid value's field, or a field whose value (valid for its
            # type) a check across fields refuses (data.heldout_path on digits beside a bad embedder.kind)
            assert any(field == k or field.startswith(k + ".") or k.startswith(field + ".")
                       for _, k, _ in sets), (field, sets)


@st.composite
def config_file(draw):
    """A config file: the demo's, with sections or fields dropped, replaced or garbled."""
    import yaml

    raw = yaml.safe_load(Path(DIGITS).read_text())
    expect, fields = "any", []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(LEAVES)))
        section, _, name = key.rpartition(".")
        node = raw.setdefault(section, {}) if section else raw
        if not isinstance(node, dict):
            continue
        what = draw(st.sampled_from(["drop", "valid", "invalid", "section_list", "drop_section"]))
        if what == "drop":
            node.pop(name, None)
            if key in ("privacy.epsilon", "privacy.delta"):
                expect = "refused"
                fields.append(key)
        elif what == "valid":
            node[name] = draw(VALID[key])
        elif what == "invalid":
            node[name] = draw(_invalid(key))
            if key not in {item.split("=")[0] for item in TINY}:  # the command line's --set replaces it
                expect = "refused"
                fields.append(key)
        elif what == "section_list" and section:
            raw[section] = [node]
            expect = "refused"
            fields.append(section)
        elif what == "drop_section" and section:
            raw.pop(section)
            if section == "privacy":
                expect = "refused"
                fields.append(section)
    text = yaml.safe_dump(raw, sort_keys=False)
    # text that is not YAML is left out: test_a_config_file_that_is_not_yaml_is_one_line
    # and bytes that are not UTF-8: test_a_config_file_that_is_not_utf8_is_refused
    mangle = draw(st.sampled_from(["none", "none", "none", "truncate", "empty", "scalar"]))
    if mangle == "truncate":
        lines = text.splitlines(keepends=True)  # at a line's end: text cut mid-line is not YAML
        text = "".join(lines[: draw(st.integers(0, len(lines)))])
        expect, fields = "any", []
    elif mangle == "empty":
        text, expect, fields = "", "refused", ["privacy"]
    elif mangle == "scalar":
        text, expect, fields = "just a string\n", "refused", ["(top level)"]
    return text.encode(), expect, fields


@fuzz_settings(30)
@given(config=config_file())
def test_config_files_run_or_are_refused_naming_the_field(config):
    blob, expect, fields = config
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.yaml"
        path.write_bytes(blob)
        run_dir = Path(tmp) / "run"
        argv = ["synthesize", str(path), "--out", str(run_dir), "--quiet"]
        for item in TINY:
            argv += ["--set", item]
        got, field = outcome("config file", argv, run_dir, (str(path),))
        if expect == "refused":
            assert got == "refused"
            assert any(field == f or field.startswith(f + ".") or f.startswith(field + ".") for f in fields), (
                field, fields)


def _one_line_refusal(argv: list[str], source: str, field: str) -> None:
    code, lines, text = run_cli(argv)
    assert code == 2 and "Traceback" not in text, text
    assert len(lines) == 1 and lines[0].startswith(f"privevo: error: {source}: {field}: "), lines


def test_a_set_value_that_is_not_yaml_is_one_line(tmp_path):
    _one_line_refusal(["synthesize", DIGITS, "--out", str(tmp_path / "run"), "--set", "vote.k=[1, 2"],
                      DIGITS, "vote.k")
    assert not (tmp_path / "run").exists()


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path):
    path = tmp_path / "tabs.yaml"
    path.write_text("privacy:\n\tepsilon: 1.0\n")
    _one_line_refusal(["synthesize", str(path), "--out", str(tmp_path / "run")], str(path), "(file)")
    assert not (tmp_path / "run").exists()


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\x00\xff\xfe garbage \x80")
    _one_line_refusal(["synthesize", str(path), "--out", str(tmp_path / "run")], str(path), "(file)")


# --------------------------------------------------------------------------- (b) corrupted private data

NAMES = ["0", "1", "2"]  # digit names: the simulator draws digits (other names are refused before any data is read)
MUST_REFUSE = "refused"


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    rows = np.concatenate([np.flatnonzero(d.target == label)[:6] for label in range(len(NAMES))])
    return d.images[rows].astype(np.float32), d.target[rows].astype(np.int64)


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """18 digits of three classes (8x8, values 0..16) and their labels (fresh copies)."""
    x, y = _digits()
    return x.copy(), y.copy()


class Blob(bytes):
    """File contents whose repr (in a failing example) is its size and digest, not its bytes."""

    def __repr__(self) -> str:
        import hashlib

        return f"<{len(self)} bytes, sha256 {hashlib.sha256(self).hexdigest()[:12]}>"


def _data_argv(run_dir: Path, *settings: str) -> list[str]:
    argv = ["synthesize", DIGITS, "--out", str(run_dir), "--quiet"]
    for item in [*TINY, f"data.class_names={json.dumps(NAMES)}", "data.public_size=18", *settings]:
        argv += ["--set", item]
    return argv


def _check(kind: str, argv: list[str], run_dir: Path, expect: str, fields: tuple[str, ...] = ()) -> None:
    """Ran or refused well; data that must be refused is refused naming one of ``fields``."""
    got, field = outcome(kind, argv, run_dir, (DIGITS,))
    if expect == MUST_REFUSE:
        assert got == "refused", "corrupted data was used"
        assert field in fields, field


def _flip(blob: bytes, draw) -> bytes:
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def npz_case(draw):
    """An ``arrays`` file: (file bytes, expectation); the digits of three classes, corrupted."""
    x, y = _digit_images()
    arrays: dict[str, typing.Any] = {"samples": x, "labels": y, "max_value": np.float64(16)}
    expect, pickled = "any", False
    what = draw(st.sampled_from(["none", "drop", "samples_dtype", "labels_dtype", "samples_shape", "labels_shape",
                                 "bad_value", "max_value", "length", "object", "labels_range", "extra",
                                 "truncate", "flip", "empty", "not_zip"]))
    if what == "drop":
        arrays.pop(draw(st.sampled_from(["samples", "labels", "max_value"])))
        expect = MUST_REFUSE
    elif what == "samples_dtype":
        dtype = draw(st.sampled_from(["uint8", "int16", "int64", "float16", "float64", "bool", "complex64", "U3",
                                      "datetime64[s]"]))
        arrays["samples"] = x.astype(dtype)
        if dtype in ("complex64", "U3", "datetime64[s]"):
            expect = MUST_REFUSE
    elif what == "labels_dtype":
        dtype = draw(st.sampled_from(["int8", "uint8", "int32", "float64", "bool", "U2", "float32"]))
        arrays["labels"] = y.astype(dtype)
        if dtype.startswith(("float", "U", "bool")):
            expect = MUST_REFUSE
    elif what == "samples_shape":
        shape = draw(st.sampled_from(["flat", "one_channel", "rgb", "scalar_rows", "empty"]))
        if shape == "flat":
            arrays["samples"] = x.reshape(len(x), -1)
        elif shape == "one_channel":
            arrays["samples"] = x[..., None]
        elif shape == "rgb":
            arrays["samples"] = np.repeat(x[..., None], 3, axis=-1)
        elif shape == "scalar_rows":
            arrays["samples"] = x[:, 0, 0]
            expect = MUST_REFUSE
        else:
            arrays["samples"], arrays["labels"] = x[:0], y[:0]
    elif what == "labels_shape":
        arrays["labels"] = y.reshape(-1, 1)
        expect = MUST_REFUSE
    elif what == "bad_value":
        i, j, k = draw(st.integers(0, len(x) - 1)), draw(st.integers(0, 7)), draw(st.integers(0, 7))
        samples = x.copy()
        samples[i, j, k] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 16.5, 1e30]))
        arrays["samples"], expect = samples, MUST_REFUSE
    elif what == "max_value":
        value = draw(st.sampled_from(["zero", "negative", "nan", "inf", "two", "text", "narrow", "wide"]))
        arrays["max_value"] = {"zero": np.float64(0), "negative": np.float64(-1), "nan": np.float64(np.nan),
                               "inf": np.float64(np.inf), "two": np.array([16.0, 16.0]), "text": np.array("16"),
                               "narrow": np.float64(1.0), "wide": np.float64(255)}[value]
        expect = "any" if value == "wide" else MUST_REFUSE
    elif what == "length":
        arrays["labels"], expect = y[:-1], MUST_REFUSE
    elif what == "object":
        name = draw(st.sampled_from(["samples", "labels"]))
        arrays[name] = np.array(list(arrays[name]) + [None], dtype=object)[:-1]
        pickled, expect = True, MUST_REFUSE
    elif what == "labels_range":
        labels = y.copy()
        labels[draw(st.integers(0, len(y) - 1))] = draw(st.sampled_from([-1, 3, 99, -(2**40)]))
        arrays["labels"], expect = labels, MUST_REFUSE
    elif what == "extra":
        arrays["notes"] = np.arange(3)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, allow_pickle=pickled) if pickled else np.savez(buffer, **arrays)
    blob = buffer.getvalue()
    if what == "truncate":
        blob, expect = blob[: draw(st.integers(0, len(blob) - 1))], MUST_REFUSE
    elif what == "flip":
        blob = _flip(blob, draw)  # may hit padding or a CRC-checked member: either outcome, never a traceback
    elif what == "empty":
        blob, expect = b"", MUST_REFUSE
    elif what == "not_zip":
        blob, expect = b"samples,labels\n1,2\n", MUST_REFUSE
    return Blob(blob), expect, what


@fuzz_settings(40)
@given(case=npz_case())
def test_corrupted_npz_runs_or_is_refused_before_any_release(case):
    blob, expect, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "private.npz"
        path.write_bytes(blob)
        run_dir = Path(tmp) / "run"
        _check("npz", _data_argv(run_dir, "data.kind=arrays", f"data.path={path}"), run_dir, expect,
               ("data.path", "data.class_names"))


def _png(image: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((image / 16 * 255).astype(np.uint8)).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def parquet_case(draw):
    """A directory of parquet shards (label, image): {file name: bytes}, settings, expectation."""
    x, y = _digit_images()
    labels = pa.array(y, pa.int64())
    images: pa.Array = pa.array([_png(img) for img in x], pa.binary())
    extra_settings: list[str] = []
    expect = "any"
    what = draw(st.sampled_from(["none", "no_label", "no_image", "label_type", "label_range", "label_null",
                                 "image_null", "image_bytes", "pixels", "pixels_wrong", "pixels_range", "struct",
                                 "image_int", "truncate", "flip", "no_shards", "empty_shard", "other_file"]))
    if what == "label_type":
        labels = pa.array(draw(st.sampled_from([[str(v) for v in y], [float(v) for v in y]])))
        expect = MUST_REFUSE
    elif what == "label_range":
        values = y.copy()
        values[draw(st.integers(0, len(y) - 1))] = draw(st.sampled_from([-1, 3, 1000]))
        labels, expect = pa.array(values, pa.int64()), MUST_REFUSE
    elif what == "label_null":
        values = [int(v) for v in y]
        values[draw(st.integers(0, len(y) - 1))] = None
        labels, expect = pa.array(values, pa.int64()), MUST_REFUSE
    elif what in ("image_null", "image_bytes"):
        values = images.to_pylist()
        i = draw(st.integers(0, len(values) - 1))
        values[i] = None if what == "image_null" else draw(st.sampled_from(
            [values[i][: len(values[i]) // 2], b"", b"not an image", _flip(values[i], draw)]))
        images = pa.array(values, pa.binary())
        expect = MUST_REFUSE if what == "image_null" or values[i] in (b"", b"not an image") else "any"
    elif what in ("pixels", "pixels_wrong", "pixels_range"):
        rows = [list(map(float, img.reshape(-1) / 16 * 255)) for img in x]
        if what == "pixels_wrong":
            rows[draw(st.integers(0, len(rows) - 1))] = [1.0, 2.0, 3.0]
            expect = MUST_REFUSE
        elif what == "pixels_range":
            rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, 63))] = draw(
                st.sampled_from([float("nan"), float("inf"), -1.0, 256.0]))
            expect = MUST_REFUSE
        images = pa.array(rows, pa.list_(pa.float64()))
    elif what == "struct":
        images = pa.StructArray.from_arrays([images, pa.array([None] * len(y), pa.string())], ["bytes", "path"])
    elif what == "image_int":
        images, expect = pa.array(np.arange(len(y)), pa.int64()), MUST_REFUSE
    columns = {"label": labels, "image": images}
    if what == "no_label":
        columns.pop("label")
        expect = MUST_REFUSE
    elif what == "no_image":
        columns.pop("image")
        expect = MUST_REFUSE
    table = pa.table(columns)
    files = {}
    for i, (start, stop) in enumerate([(0, 9), (9, len(y))]):
        sink = io.BytesIO()
        pq.write_table(table.slice(start, stop - start), sink)
        files[f"shard-{i}.parquet"] = Blob(sink.getvalue())
    if what == "truncate":
        name = draw(st.sampled_from(sorted(files)))
        files[name] = files[name][: draw(st.integers(0, len(files[name]) - 1))]
        expect = MUST_REFUSE
    elif what == "flip":
        name = draw(st.sampled_from(sorted(files)))
        files[name] = _flip(files[name], draw)
    elif what == "no_shards":
        files, expect = {"readme.txt": b"no shards here"}, MUST_REFUSE
    elif what == "empty_shard":
        sink = io.BytesIO()
        pq.write_table(table.slice(0, 0), sink)
        files["shard-2.parquet"] = sink.getvalue()
    elif what == "other_file":
        files["notes.txt"] = b"ignored"
    channels = draw(st.sampled_from([1, 3]))
    extra_settings += [f"data.channels={channels}", "data.image_size=[8, 8]"]
    return files, extra_settings, expect, what


@fuzz_settings(35)
@given(case=parquet_case())
def test_corrupted_parquet_shards_run_or_are_refused_before_any_release(case):
    files, settings_, expect, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shards"
        root.mkdir()
        for name, blob in files.items():
            (root / name).write_bytes(blob)
        run_dir = Path(tmp) / "run"
        _check("parquet", _data_argv(run_dir, "data.kind=parquet_shards", f"data.path={root}", *settings_), run_dir,
               expect, ("data.path", "data.class_names", "data.label_column", "data.image_column"))


@st.composite
def folder_case(draw):
    """An image folder: {relative path: bytes or None (a directory)}, expectation."""
    x, y = _digit_images()
    files: dict[str, bytes | None] = {f"{NAMES[label]}/{i:02d}.png": _png(img) for i, (img, label) in
                                      enumerate(zip(x, y))}
    expect = "any"
    what = draw(st.sampled_from(["none", "corrupt", "zero_bytes", "mode", "empty_class", "no_classes", "undeclared",
                                 "hidden", "not_image", "dir_named_png", "gif", "jpeg_cmyk", "not_a_dir"]))
    victim = draw(st.sampled_from(sorted(files)))
    if what == "corrupt":
        blob = files[victim]
        files[victim] = draw(st.sampled_from([blob[: len(blob) // 2], b"\x89PNG\r\n\x1a\n garbage", b"hello"]))
        expect = MUST_REFUSE
    elif what == "zero_bytes":
        files[victim], expect = b"", MUST_REFUSE
    elif what == "mode":
        mode = draw(st.sampled_from(["RGB", "RGBA", "P", "I;16", "1", "LA"]))
        image = x[list(files).index(victim)]
        files[victim] = _png(image, mode) if mode != "I;16" else _png16(image)
    elif what == "empty_class":
        cls = draw(st.sampled_from(NAMES))
        files = {k: v for k, v in files.items() if not k.startswith(cls + "/")}
        files[cls] = None
    elif what == "no_classes":
        files = {}
    elif what == "undeclared":
        files["zebra/00.png"], expect = files[victim], MUST_REFUSE
    elif what == "hidden":
        files[".cache/00.png"] = files[victim]
    elif what == "not_image":
        files[victim.rsplit("/", 1)[0] + "/notes.txt"] = b"not an image"
    elif what == "dir_named_png":
        files[victim.rsplit("/", 1)[0] + "/folder.png"] = None
    elif what == "gif":
        buffer = io.BytesIO()
        frames = [Image.fromarray((x[0] / 16 * 255).astype(np.uint8)), Image.fromarray((x[1] / 16 * 255).astype(np.uint8))]
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
        files[victim.removesuffix(".png") + ".gif"] = buffer.getvalue()
    elif what == "jpeg_cmyk":
        buffer = io.BytesIO()
        Image.fromarray((x[0] / 16 * 255).astype(np.uint8)).convert("CMYK").save(buffer, format="JPEG")
        files[victim.removesuffix(".png") + ".jpg"] = buffer.getvalue()
    channels = draw(st.sampled_from([1, 3]))
    files = {k: None if v is None else Blob(v) for k, v in files.items()}
    return files, [f"data.channels={channels}", "data.image_size=[8, 8]"], expect, what


def _png16(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((image / 16 * 65535).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


@fuzz_settings(35)
@given(case=folder_case())
def test_corrupted_image_folders_run_or_are_refused_before_any_release(case):
    files, settings_, expect, what = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        if what == "not_a_dir":
            root.write_bytes(b"a file, not a folder")
            expect = MUST_REFUSE
        else:
            root.mkdir()
            for name, blob in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                if blob is None:
                    (root / name).mkdir(exist_ok=True)
                else:
                    (root / name).write_bytes(blob)
        run_dir = Path(tmp) / "run"
        _check("image folder", _data_argv(run_dir, "data.kind=image_folder", f"data.path={root}", *settings_),
               run_dir, expect, ("data.path", "data.class_names"))


TEXT_NAMES = ["negative", "positive"]
API_KEY_ENV = "PRIVEVO_FUZZ_API_KEY"


@pytest.fixture(scope="module")
def text_server():
    """A loopback OpenAI-compatible server (tests/openai_server.py) as the text generator."""
    from openai_server import EchoModel, OpenAIServer

    os.environ[API_KEY_ENV] = "sk-fuzz"
    server = OpenAIServer(EchoModel("f"), key="sk-fuzz")
    yield server
    server.stop()
    os.environ.pop(API_KEY_ENV, None)


ROWS = [("the food was great and the staff were friendly", "positive"), ("lovely place, tasty dishes", "positive"),
        ("cold food and a rude waiter", "negative"), ("terrible service, we waited an hour", "negative")] * 3


@st.composite
def csv_case(draw):
    """A text table (CSV, TSV or parquet): (file name, bytes, extra settings, expectation)."""
    header, rows, suffix, expect = ["text", "label"], [list(r) for r in ROWS], ".csv", "any"
    what = draw(st.sampled_from(["none", "no_text", "no_label", "bad_label", "empty_label", "label_case",
                                 "ragged", "not_utf8", "empty", "header_only", "quote", "bom", "tsv", "parquet",
                                 "parquet_null", "wrong_suffix", "renamed"]))
    settings_: list[str] = []
    if what == "no_text":
        header, expect = ["body", "label"], MUST_REFUSE
    elif what == "no_label":
        header, expect = ["text", "stars"], MUST_REFUSE
    elif what in ("bad_label", "empty_label", "label_case"):
        rows[draw(st.integers(0, len(rows) - 1))][1] = {"bad_label": "neutral", "empty_label": "",
                                                        "label_case": "Positive"}[what]
        expect = MUST_REFUSE
    elif what == "renamed":
        header = ["review", "sentiment"]
        settings_ = ["data.text_column=review", "data.label_column=sentiment"]
    sink = io.StringIO()
    writer = csv.writer(sink, delimiter="\t" if what == "tsv" else ",")
    writer.writerow(header)
    writer.writerows(rows)
    blob = sink.getvalue().encode()
    if what == "ragged":
        blob += b"one,two,three,four\n"
        expect = MUST_REFUSE
    elif what == "not_utf8":
        blob = blob.replace(b"lovely", b"lov\xff\xfely")
        expect = MUST_REFUSE
    elif what == "empty":
        blob, expect = b"", MUST_REFUSE
    elif what == "header_only":
        blob = b"text,label\n"
    elif what == "quote":
        blob += b'"an unclosed quote,positive\n'
    elif what == "bom":
        blob = b"\xef\xbb\xbf" + blob
    elif what == "tsv":
        suffix = ".tsv"
    elif what in ("parquet", "parquet_null"):
        labels = [r[1] for r in rows]
        if what == "parquet_null":
            labels[draw(st.integers(0, len(labels) - 1))] = None
            expect = MUST_REFUSE
        sink_ = io.BytesIO()
        pq.write_table(pa.table({"text": [r[0] for r in rows], "label": labels}), sink_)
        blob, suffix = sink_.getvalue(), ".parquet"
    elif what == "wrong_suffix":
        suffix, expect = ".txt", MUST_REFUSE
    return f"reviews{suffix}", Blob(blob), settings_, expect


@fuzz_settings(14)
@given(case=csv_case())
def test_corrupted_text_tables_run_or_are_refused_before_any_release(case, text_server):
    name, blob, settings_, expect = case
    generator = {"endpoints": [text_server.url], "model": "echo", "api_key_env": API_KEY_ENV, "target_words": 6,
                 "backoff_s": 0.01, "timeout_s": 5.0}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        run_dir = Path(tmp) / "run"
        argv = ["synthesize", DIGITS, "--out", str(run_dir), "--quiet"]
        for item in [*TINY, "data.kind=text_table", f"data.path={path}", f"data.class_names={json.dumps(TEXT_NAMES)}",
                     "data.public_size=12", "generator.kind=api", f"generator.options={json.dumps(generator)}",
                     "embedder.kind=sentence_transformer", "evaluation.features=embedding", "vote.k=1", *settings_]:
            argv += ["--set", item]
        _check("text table", argv, run_dir, expect,
               ("data.path", "data.class_names", "data.text_column", "data.label_column"))


# --------------------------------------------------------------------------- (c) audit configs


class _WouldStartRay(BaseException):
    """Raised where an accepted audit would start Ray (not an Exception: main lets it through)."""


AUDIT_BASE = {
    "name": "fuzz-audit", "seed": 0, "runs": 4, "delta": 1e-5, "data": {"kind": "digits"},
    "canaries": {"count": 4, "kind": "mislabeled"},
    "training": {"hidden": [8], "epochs": 1, "batch_size": 32, "lr": 0.1},
    "resources": {"chunk_runs": 4, "cpus_per_task": 1},
    "paradigms": [{"kind": "none"}],
}
_PARADIGM = st.fixed_dictionaries({"kind": st.sampled_from(["none", "dpsgd", "pe", "coreset", "distill", "dfkd",
                                                            "diffusion", "nonesuch", ""])}, optional={
    "name": st.sampled_from(["a", "b", "dp-1", "bad name!", "x/y", ""]),
    "epsilon": st.sampled_from([0.5, 4.0, 0, -1, "lots", None]),
    "synthesize": st.sampled_from(["configs/digits.yaml", "/nonexistent.yaml", 3]),
    "synthesize_overrides": st.sampled_from([{}, {"generations": 1}, {"vote": {"k": 0}}, {"nonesuch": 1},
                                             {"privacy": {"epsilon": -1}}, "generations=2", {"population": 3}]),
    "options": st.sampled_from([{}, {"method": "herding", "fraction": 0.2}, {"fraction": 2.0}, {"nonesuch": 1},
                                {"init": "public"}, [1]]),
    "one_run": st.booleans(),
    "one_run_guesses": st.sampled_from([0.1, 0.5, 0.0, 0.9]),
    "max_grad_norm": st.sampled_from([1.0, 0.0, -2.0]),
    "epochs": st.sampled_from([1, 0, None]),
    "batch_size": st.sampled_from([8, 0]),
    "lr": st.sampled_from([0.1, 0.0]),
    "momentum": st.sampled_from([0.0, 0.9, 1.0]),
    "set": st.just(["generations=2"]),
})
_AUDIT_VALUES = {
    "name": st.sampled_from(["a", 5, ""]),
    "seed": st.sampled_from([0, 3, -1, 2**70, "x"]),
    "runs": st.sampled_from([4, 6, 5, 2, 0, "many"]),
    "delta": st.sampled_from([1e-5, 0.5, 0, 1, "small"]),
    "data": st.sampled_from([{"kind": "digits"}, {"kind": "arrays"}, {"kind": "text_table", "path": DIGITS},
                             {"kind": "digits", "labels": [0, 1]}, {"kind": "nonesuch"}, "digits",
                             {"kind": "image_folder", "path": "/nonexistent", "class_names": ["a"],
                              "image_size": [8, 8], "heldout": "split"}]),
    "canaries": st.fixed_dictionaries({}, optional={
        "count": st.sampled_from([2, 4, 1, 0, 100000]), "kind": st.sampled_from(["mislabeled", "ood", "duplicated", "x"]),
        "pattern": st.sampled_from(["invert", "noise", "x"]), "repeat": st.sampled_from([None, 1, 2, 0])}),
    "training": st.fixed_dictionaries({}, optional={
        "hidden": st.sampled_from([[8], [], [0], "8", [8, 8]]), "epochs": st.sampled_from([1, 0]),
        "batch_size": st.sampled_from([32, 0]), "lr": st.sampled_from([0.1, 0, -1]),
        "momentum": st.sampled_from([0.0, 0.99, 1.0]), "weight_decay": st.sampled_from([0.0, -1.0]),
        "optimizer": st.sampled_from(["sgd", "adam", "lbfgs"]), "augment": st.sampled_from([True, "yes please"])}),
    "resources": st.fixed_dictionaries({}, optional={
        "chunk_runs": st.sampled_from([1, 4, 0]), "cpus_per_task": st.sampled_from([1, 0.5, 0, -1]),
        "gpus_per_task": st.sampled_from([0, 1, -1]), "num_cpus": st.sampled_from([None, 2, 0])}),
    "paradigms": st.lists(_PARADIGM, min_size=0, max_size=3),
    "nonesuch": st.just(1),
}


@st.composite
def audit_case(draw):
    """An audit config: the tiny base with fields replaced, dropped or garbled, and --set overrides."""
    raw = json.loads(json.dumps(AUDIT_BASE))
    for key in draw(st.lists(st.sampled_from(sorted(_AUDIT_VALUES)), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()) and key in raw:
            raw.pop(key)
        else:
            raw[key] = draw(_AUDIT_VALUES[key])
    sets = draw(st.lists(st.sampled_from(["runs=6", "runs=3", "delta=2", "canaries.count=3", "canaries.kind=x",
                                          "training.epochs=0", "paradigms.0.kind=dpsgd", "seed", "nonesuch.x=1",
                                          "resources.chunk_runs=2"]), max_size=2))
    return raw, sets


@fuzz_settings(150)
@given(case=audit_case())
def test_audit_configs_are_accepted_or_refused_naming_the_field(case):
    import yaml

    from privevo.pipelines import ray_session

    raw, sets = case
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        def would_start_ray(*args, **kwargs):
            raise _WouldStartRay

        patch.setattr(ray_session, "ensure_ray", would_start_ray)
        path = Path(tmp) / "audit.yaml"
        path.write_text(yaml.safe_dump(raw))
        out = Path(tmp) / "audit"
        argv = ["audit", str(path), "--out", str(out)]
        for item in sets:
            argv += ["--set", item]
        cwd = os.getcwd()
        os.chdir(ROOT)  # PE paradigms name configs/digits.yaml relative to the repository
        try:
            code, lines, text = run_cli(argv)
        except _WouldStartRay:
            CASES["audit", "accepted"] += 1
            assert not out.exists()
            return
        finally:
            os.chdir(cwd)
        assert "Traceback" not in text, text
        assert code == 2, f"exit {code}:\n{text}"
        assert len(lines) == 1, lines
        assert lines[0].startswith("privevo: error: "), lines
        where, _, rest = lines[0].removeprefix("privevo: error: ").partition(": ")
        field, sep, message = rest.partition(": ")
        assert where in (str(path), "configs/digits.yaml", "/nonexistent.yaml") and field and sep and message, lines
        assert not out.exists()
        CASES["audit", "refused"] += 1


MINIMUM_CASES = {"--set": 100, "config file": 25, "npz": 35, "parquet": 30, "image folder": 30, "text table": 12,
                 "audit": 120}


def test_the_fuzz_suite_ran_its_cases():
    """Run last (file order): every property ran its cases, and each both ran (or was accepted) and
    was refused somewhere: a property whose every case is refused by one early check fuzzes nothing."""
    if SCALE < 1 or len({k for k, _ in CASES}) < len(MINIMUM_CASES):
        pytest.skip("only part of the fuzz suite ran (-k, or PRIVEVO_FUZZ_SCALE < 1)")
    for kind, least in MINIMUM_CASES.items():
        outcomes = {o: n for (k, o), n in CASES.items() if k == kind}
        assert sum(outcomes.values()) >= least, (kind, outcomes)
        assert outcomes.get("refused", 0) > 0 and outcomes.get("ran", 0) + outcomes.get("accepted", 0) > 0, (
            kind, outcomes)


def test_an_embedding_store_inside_the_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["synthesize", DIGITS, "--out", str(run_dir), "--quiet", "--set", "resources.engine=in_process",
            "--set", f"vote.embedding_store={run_dir}/store"]
    _one_line_refusal(argv, DIGITS, "vote.embedding_store")
    assert not run_dir.exists()


@pytest.mark.parametrize("blob", [b"paradigms:\n\t- kind: none\n", b"runs: [4\n", b"\x00\xff\xfe\x80"])
def test_an_audit_config_that_is_not_yaml_or_not_utf8_is_one_line(blob, tmp_path):
    """Found by fuzzing: PyYAML's multi-line message reached the console, and bytes that are not
    UTF-8 were an unexpected UnicodeDecodeError (exit 1)."""
    path = tmp_path / "audit.yaml"
    path.write_bytes(blob)
    _one_line_refusal(["audit", str(path), "--out", str(tmp_path / "out")], str(path), "(file)")
    assert not (tmp_path / "out").exists()
