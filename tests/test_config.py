"""Bad configs are refused with the file and field named, before anything runs."""

import textwrap
from pathlib import Path

import pytest

from privevo.pipelines.cli import main
from privevo.pipelines.config import ConfigError, load_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_demo_config_loads():
    config = load_config(DEMO)
    assert config.privacy.delta == 1e-5
    assert config.seed == 0


def test_overrides_apply_and_are_validated():
    config = load_config(DEMO, ["privacy.epsilon=4", "vote.k=3"])
    assert config.privacy.epsilon == 4.0 and config.vote.k == 3
    with pytest.raises(ConfigError, match=r"privacy\.epsilonn: unknown field"):
        load_config(DEMO, ["privacy.epsilonn=4"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("privacy.epsilon=0", "privacy.epsilon"),
        ("privacy.epsilon=-1", "privacy.epsilon"),
        ("privacy.epsilon=.inf", "privacy.epsilon"),
        ("resources.generator_cpus=.inf", "resources.generator_cpus"),
        ("variation.degree_start=.nan", "variation.degree_start"),
        ("privacy.delta=1.5", "privacy.delta"),
        ("vote.k=0", "vote.k"),
        ("generations=0", "generations"),
        ("population.per_class=abc", "population.per_class"),
        ("frobnicate=1", "frobnicate"),
        ("generator.kind=os.system", "generator.kind"),
    ],
)
def test_bad_values_name_file_and_field(override, field):
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, [override])
    assert info.value.field == field
    assert str(info.value).startswith(f"{DEMO}: {field}:")


def test_unknown_nested_field_in_file(tmp_path):
    path = write(tmp_path, """
        privacy: {epsilon: 1, delta: 1.0e-5}
        vote: {k: 1, treshold: 2}
    """)
    with pytest.raises(ConfigError, match=rf"{path}: vote\.treshold: unknown field"):
        load_config(path)


def test_missing_required_field(tmp_path):
    path = write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match=r"privacy: Field required"):
        load_config(path)


def test_yaml_is_data_not_code(tmp_path):
    path = write(tmp_path, "privacy: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    "override, field, words",
    [
        ("privacy.delta=0.001", "privacy.delta", "not below 1/data.public_size"),
        ("data.labels=[0,1,12]", "data.labels", "not a declared class"),
        ("data.labels=[]", "data.labels", "empty"),
        ("vote.k=500", "vote.k", "exceed"),
        ("privacy.epsilon=0", "privacy.epsilon", "greater than 0"),
        ("vote.k=0", "vote.k", "greater than or equal to 1"),
        ("frobnicate=1", "frobnicate", "unknown field"),
    ],
)
def test_cli_refuses_before_any_release(tmp_path, capsys, monkeypatch, override, field, words):
    def no_private_data(*args, **kwargs):
        raise AssertionError("private data was read before the config was refused")

    # every way the demo's private set can be read fails the test
    import sklearn.datasets

    from privevo.pipelines import data
    from privevo.pipelines.data import rows

    monkeypatch.setattr(sklearn.datasets, "load_digits", no_private_data)
    for name in ("load_private", "read_rows", "check_private_labels"):
        monkeypatch.setattr(data, name, no_private_data)
    for name in ("digits_split", "read_rows"):  # where the loaders look them up
        monkeypatch.setattr(rows, name, no_private_data)
    out = tmp_path / "run"
    code = main(["synthesize", str(DEMO), "--set", override, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{DEMO}: {field}:" in err and words in err
    assert not out.exists()  # nothing half written, nothing released


def test_cli_refuses_existing_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    assert main(["synthesize", str(DEMO), "--out", str(out), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"privevo {version('privevo')}"
