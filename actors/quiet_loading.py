"""Model loading without the libraries' own progress bars.

transformers draws a "Loading weights" bar and diffusers a "Loading pipeline components" bar
whenever a model is read from disk; inside an actor they land in the middle of the run's own
progress display (and of ``--quiet`` runs). Loaders call ``quiet_model_loading()`` first; it
only turns those libraries' bars off in the calling process (an actor's), and leaves their
warnings and errors alone.
"""

from __future__ import annotations

import importlib

__all__ = ["quiet_model_loading"]


def quiet_model_loading() -> None:
    """Turn off the loading progress bars of transformers, diffusers and huggingface_hub (those installed)."""
    for name in ("transformers.utils.logging", "diffusers.utils.logging", "huggingface_hub.utils"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        disable = getattr(module, "disable_progress_bars", None) or getattr(module, "disable_progress_bar", None)
        if disable is not None:
            disable()
