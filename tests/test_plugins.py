"""A third-party package adds a generator kind through an entry point, with no change to privevo."""

import subprocess
import sys
import runpy
import shutil
from pathlib import Path

import pytest

from privevo.actors import plugins
from conftest import small_config
from privevo.pipelines.config import ConfigError
from privevo.pipelines.evolution import synthesize

pytestmark = pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "blobs"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """The example plugin (examples/blobs) as a real distribution, installed (pip, offline, its
    dependencies are privevo's own) into a folder put on sys.path."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True)
    sys.path.insert(0, str(site))
    plugins.refresh()
    yield site
    sys.path.remove(str(site))
    plugins.refresh()


def test_the_built_in_kinds_are_plugins_too():
    assert {"simulator", "diffusion", "llm"} <= set(plugins.kinds("generator"))
    assert {"pixels", "inception", "clip", "sentence_transformer"} <= set(plugins.kinds("embedder"))
    assert {"coreset", "distill", "dfkd", "diffusion"} <= set(plugins.kinds("paradigm"))


def test_an_unknown_kind_is_refused_naming_the_field_and_the_installed_kinds(tmp_path):
    with pytest.raises(ConfigError) as info:
        synthesize(small_config(**{"generator.kind": "nope"}), tmp_path / "run")
    assert info.value.field == "generator.kind" and "simulator" in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_pe_runs_with_an_installed_plugin(installed_plugin, tmp_path):
    config = small_config(**{"generator.kind": "blobs", "generator.options": "{width: 2.0}", "generations": 2,
                             "resources.engine": "in_process"})
    result = synthesize(config, tmp_path / "run", insecure_noise_seed=5)
    assert result.report["privacy"]["releases"] == 2
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "run" / "synthetic.parquet")
    assert "param_centre" in table.column_names and table.num_rows == 10 * config.population.final_per_class
    # its options are typed by the plugin's own model
    with pytest.raises(ConfigError) as info:
        synthesize(small_config(**{"generator.kind": "blobs", "generator.options": "{colour: red}"}), tmp_path / "bad")
    assert info.value.field == "generator.options.colour"


@pytest.mark.slow
def test_the_example_script_runs_pe_with_the_plugin(installed_plugin, tmp_path):
    """examples/blobs/run.py, as a user runs it: the digits config with the kind swapped, Python API."""
    example = runpy.run_path(str(EXAMPLE / "run.py"))
    report = example["main"](str(tmp_path / "blobs"))
    import yaml

    recorded = yaml.safe_load((tmp_path / "blobs" / "config.yaml").read_text())
    assert recorded["generator"] == {**recorded["generator"], "kind": "blobs", "options": {"width": 1.2}}
    assert recorded["privacy"]["epsilon"] - 1e-3 < report["privacy"]["epsilon"] <= recorded["privacy"]["epsilon"]
    import pyarrow.parquet as pq

    centres = pq.read_table(tmp_path / "blobs" / "synthetic.parquet").column("param_centre").to_pylist()
    assert all(0 <= c <= 7 for pair in centres for c in pair)  # clipped inside the 8x8 digits
