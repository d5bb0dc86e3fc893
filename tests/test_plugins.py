"""A third-party package adds a generator kind through an entry point, with no change to privevo."""

import subprocess
import sys
import textwrap

import pytest

from privevo.actors import plugins
from conftest import small_config
from privevo.pipelines.config import ConfigError
from privevo.pipelines.evolution import synthesize

pytestmark = pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")

PLUGIN = '''
"""Blobs: a tiny generator plugin (one Gaussian blob per image, its centre the parameters)."""

import numpy as np
from pydantic import BaseModel

from privevo.actors.generators.base import SampleBatch


class Options(BaseModel, extra="forbid"):
    width: float = 1.5


class BlobGenerator:
    modality = "image"
    Options = Options

    def __init__(self, options, context):
        self.width = options.width
        self.max_value = context.max_value
        self.shape = context.sample_shape

    def _draw(self, labels, centres):
        y, x = np.mgrid[0:self.shape[0], 0:self.shape[1]]
        d2 = (y[None] - centres[:, :1, None]) ** 2 + (x[None] - centres[:, 1:, None]) ** 2
        images = (self.max_value * np.exp(-d2 / (2 * self.width ** 2))).astype(np.float32)
        return SampleBatch(labels=np.asarray(labels), samples=images, params={"centre": centres})

    def random(self, labels, seed):
        rng = np.random.default_rng(seed)
        return self._draw(labels, rng.uniform(0, self.shape[0] - 1, size=(len(labels), 2)))

    def variation(self, parents, degree, seed):
        rng = np.random.default_rng(seed)
        centres = parents.params["centre"] + degree * rng.normal(size=parents.params["centre"].shape)
        return self._draw(parents.labels, np.clip(centres, 0, self.shape[0] - 1))
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """The plugin as a real distribution, installed (pip, offline) into a folder put on sys.path."""
    root = tmp_path_factory.mktemp("plugin")
    package = root / "src" / "privevo_blobs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (root / "src" / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "privevo-blobs"
        version = "0.1.0"

        [project.entry-points."privevo.generators"]
        blobs = "privevo_blobs:BlobGenerator"
    '''))
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(root / "src")], check=True)
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
