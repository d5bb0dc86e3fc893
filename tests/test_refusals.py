"""Bad input a user can give: refused in one line naming the file and field, before any private
record is used or any release drawn, and nothing half written (issue 15's table, as regressions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from privevo.pipelines.cli import main

CLASSES = "data.class_names=['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']"


@pytest.fixture(scope="module")
def digits_arrays():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[:400].astype(np.float32), d.target[:400].astype(np.int64)


def refused(capsys, tmp_path: Path, *settings: str, engine: str = "in_process") -> tuple[str, str]:
    """Run the CLI on the digits config with ``settings``; return (field, message) of its refusal."""
    out = tmp_path / "run"
    argv = ["synthesize", "configs/digits.yaml", "--out", str(out), "--quiet", "--set", "generations=1",
            "--set", f"resources.engine={engine}"]
    for item in settings:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("privevo: error: configs/digits.yaml: "), err  # one line, no traceback
    assert not out.exists()  # nothing half written, no ledger: no budget spent
    field, _, message = err[0].removeprefix("privevo: error: configs/digits.yaml: ").partition(": ")
    return field, message


def arrays(tmp_path: Path, name: str, **members) -> list[str]:
    path = tmp_path / f"{name}.npz"
    np.savez(path, **members)
    return ["data.kind=arrays", f"data.path={path}", CLASSES, "data.public_size=400"]


@pytest.mark.parametrize("engine", ["in_process", pytest.param("ray", marks=pytest.mark.slow)])
@pytest.mark.parametrize("bad", ["nan", "far_out_of_range", "negative"])
def test_private_values_outside_the_declared_range_are_refused_before_any_release(
        bad, engine, digits_arrays, tmp_path, capsys, monkeypatch, request):
    if engine == "ray":
        request.getfixturevalue("ray_session")
    monkeypatch.setenv("PRIVEVO_PRIVATE_DIR", str(tmp_path / "owner"))
    x, y = digits_arrays
    x = x.copy()
    x[7, 3, 3] = {"nan": np.nan, "far_out_of_range": 1e9, "negative": -1.0}[bad]
    x[250, 0, 0] = np.inf
    field, message = refused(capsys, tmp_path, *arrays(tmp_path, bad, samples=x, labels=y,
                                                        max_value=np.float64(16)), engine=engine)
    assert field == "data.path" and "outside [0, 16]" in message
    told = message.split(".npz: ")[1].lower()
    assert "1e+09" not in told and "nan" not in told and "inf" not in told.replace("infinite", "")
    # the rows, for the data owner only: an owner-only file outside the run directory
    listed = Path(message.split("rows: ")[1].split(" (owner-only)")[0])
    assert listed.parent.parent == tmp_path / "owner" and listed.stat().st_mode & 0o077 == 0
    assert json.loads(listed.read_text())["rows"] == [7, 250]


def test_an_npz_without_labels_a_truncated_one_and_a_negative_label(digits_arrays, tmp_path, capsys):
    x, y = digits_arrays
    field, message = refused(capsys, tmp_path, *arrays(tmp_path, "nolabels", samples=x, max_value=np.float64(16)))
    assert field == "data.path" and "no array 'labels'" in message
    good = arrays(tmp_path, "good", samples=x, labels=y, max_value=np.float64(16))
    blob = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    field, message = refused(capsys, tmp_path, *[s.replace("good.npz", "cut.npz") for s in good])
    assert field == "data.path" and "not a readable .npz" in message
    y = y.copy()
    y[3] = -1
    field, message = refused(capsys, tmp_path, *arrays(tmp_path, "neg", samples=x, labels=y,
                                                        max_value=np.float64(16)))
    assert field == "data.class_names" and "-1" not in message.split(".npz: ")[1]


def test_an_epsilon_the_accountant_cannot_hold_is_refused_at_once(tmp_path, capsys):
    field, message = refused(capsys, tmp_path, "privacy.epsilon=1e9")
    assert field == "privacy.epsilon" and "supported" in message


def test_populations_that_cannot_fit_the_driver_are_refused_before_any_release(tmp_path, capsys):
    """final_per_class = 1e8 used to draw all five releases, then hang making 1e9 samples."""
    field, message = refused(capsys, tmp_path, "population.final_per_class=100000000")
    assert field == "population.final_per_class" and "GiB" in message
    field, _ = refused(capsys, tmp_path, "population.per_class=10000000")
    assert field == "population.per_class"


def test_the_resource_plan_follows_the_machine():
    from privevo.pipelines.checks import check_resources, resource_plan
    from privevo.pipelines.config import ConfigError, load_config
    from privevo.pipelines.data import dataset_info

    config = load_config("configs/digits.yaml")
    info = dataset_info(config.data)
    labels = tuple(range(10))
    plan = resource_plan(config, info, labels)
    assert plan["final_samples"] == 10 * config.population.final_per_class
    assert plan["bytes_per_sample"] >= 4 * 64
    check_resources(config, info, labels, "c", memory=int(plan["driver_bytes"] / 0.8) + 1)  # just fits
    with pytest.raises(ConfigError) as info_:
        check_resources(config, info, labels, "c", memory=int(plan["driver_bytes"] / 0.8) - 1)
    assert info_.value.field == "population.final_per_class"


# --------------------------------------------------------------------------- found by tests/test_fuzz.py


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image / 16 * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_unreadable_image_file_is_refused_before_any_release(digits_arrays, tmp_path, capsys, monkeypatch):
    """A corrupt PNG used to crash the voter (PIL's OSError: exit 1, after Ray started)."""
    monkeypatch.setenv("PRIVEVO_PRIVATE_DIR", str(tmp_path / "owner"))
    x, y = digits_arrays
    root = tmp_path / "images"
    for i in range(30):
        (root / str(y[i] % 3)).mkdir(parents=True, exist_ok=True)
        (root / str(y[i] % 3) / f"secret-name-{i:02d}.png").write_bytes(_png_bytes(x[i]))
    victim = sorted((root / "1").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:40])
    settings = ["data.kind=image_folder", f"data.path={root}", "data.class_names=['0', '1', '2']",
                "data.image_size=[8, 8]", "data.public_size=30"]
    field, message = refused(capsys, tmp_path, *settings)
    assert field == "data.path" and "not readable" in message and "secret-name" not in message
    listed = Path(message.split("rows: ")[1].split(" (owner-only)")[0])
    files = sorted(p for c in "012" for p in (root / c).iterdir())  # the source's rows: class order, then name
    assert [files[r] for r in json.loads(listed.read_text())["rows"]] == [victim]


def test_unreadable_image_bytes_in_a_parquet_shard_are_refused_before_any_release(digits_arrays, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = digits_arrays
    images = [_png_bytes(img) for img in x[:30]]
    images[5] = images[5][:30]
    root = tmp_path / "shards"
    root.mkdir()
    pq.write_table(pa.table({"label": pa.array(y[:30] % 3), "image": pa.array(images, pa.binary())}),
                   root / "part-0.parquet")
    field, message = refused(capsys, tmp_path, "data.kind=parquet_shards", f"data.path={root}",
                             "data.class_names=['0', '1', '2']", "data.image_size=[8, 8]", "data.public_size=30")
    assert field == "data.image_column" and "not a readable image" in message


def test_one_channel_arrays_and_an_empty_private_set_run(digits_arrays, tmp_path, capsys, monkeypatch):
    """Samples (n, H, W, 1) used to draw the release, then fail writing the synthetic set's PNGs
    (the budget spent for nothing); an empty set failed reshaping in the range check."""
    monkeypatch.setenv("PRIVEVO_INSECURE_NOISE_SEED", "1")
    x, y = digits_arrays
    for name, samples, labels in [("one_channel", x[:60, ..., None], y[:60]), ("empty", x[:0], y[:0])]:
        path = tmp_path / f"{name}.npz"
        np.savez(path, samples=samples, labels=labels, max_value=np.float64(16))
        out = tmp_path / name
        argv = ["synthesize", "configs/digits.yaml", "--out", str(out), "--quiet", "--set", "generations=1",
                "--set", "resources.engine=in_process", "--set", "population.per_class=8", "--set",
                "population.final_per_class=8", "--set", "data.kind=arrays", "--set", f"data.path={path}",
                "--set", CLASSES, "--set", "data.public_size=60"]
        assert main(argv) == 0, capsys.readouterr().err
        assert (out / "ledger.jsonl").exists() and (out / "synthetic.parquet").exists()


def test_gpus_asked_of_the_in_process_engine_on_a_machine_without_one_are_refused(tmp_path, capsys):
    """Used to fail in torch's CUDA initialisation (an unexpected AssertionError, exit 1)."""
    from privevo.pipelines.checks import cuda_available

    if cuda_available():
        pytest.skip("this machine has a CUDA device: the in-process engine may use it")
    for field in ("resources.voter_gpus", "resources.generator_gpus"):
        assert refused(capsys, tmp_path, f"{field}=0.5")[0] == field
