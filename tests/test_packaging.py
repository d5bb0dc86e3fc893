"""privevo installs under its own namespace, and `import privevo` is the public API."""

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed_under_the_privevo_namespace():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"privevo": "."}
    folders = {"privevo." + ".".join(p.parent.relative_to(ROOT).parts)
               for top in ("pipelines", "actors") for p in (ROOT / top).rglob("__init__.py")}
    assert set(config["packages"]) == {"privevo", *folders}  # no bare top-level pipelines/actors


def test_the_public_api_resolves_without_loading_ray_or_torch():
    import subprocess

    code = ("import sys, privevo; names = [getattr(privevo, n) for n in ['synthesize', 'rebuild', 'load_config', "
            "'RunConfig', 'SampleBatch', 'Generator', 'GeneratorContext']]; "
            "print('ray' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_name_of_the_api_exists():
    import privevo

    for name in privevo.__all__:
        assert getattr(privevo, name) is not None, name
