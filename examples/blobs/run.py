"""Run PE with the blobs generator from Python (after `pip install ./examples/blobs`).

    python examples/blobs/run.py [RUN_DIR]

The digits demo's config with the generator swapped: nothing in privevo changes, the config
names the kind only. Blobs are a poor prior for digits, so expect low accuracy: the point is
the plumbing (the plugin's options typed by its own model, its parameters in the output).
"""

import sys
from pathlib import Path

import privevo

ROOT = Path(__file__).resolve().parents[2]


def main(run_dir: str) -> dict:
    config = privevo.load_config(ROOT / "configs" / "digits.yaml", [
        "generator.kind=blobs", "generator.options={width: 1.2}",
        "resources.engine=in_process",  # no Ray: a small run in this process
    ])
    result = privevo.synthesize(config, run_dir)
    privacy = result.report["privacy"]
    print(f"{result.run_dir}: epsilon {privacy['epsilon']:.4f}, {privacy['releases']} releases")
    return result.report


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/blobs")
