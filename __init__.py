"""privevo: differentially private synthetic data with Private Evolution, and its privacy audit.

The public Python API (this file is the ``privevo`` package; the code lives in
``privevo.pipelines`` and ``privevo.actors``)::

    import privevo

    config = privevo.load_config("configs/digits.yaml", ["privacy.epsilon=4"])
    result = privevo.synthesize(config, "runs/eps4")       # a RunResult: run_dir, report
    privevo.rebuild("runs/eps4", "runs/eps4-rebuilt")       # every output again, from the releases alone
    report = privevo.audit(privevo.load_audit_config("configs/audit-digits.yaml"), "runs/audit")

Configs are the typed models ``RunConfig`` and ``AuditConfig``. A new foundation model, embedder
or training paradigm is one class meeting the contracts ``Generator`` (with ``SampleBatch`` and
``GeneratorContext``), ``Embedder`` or ``Paradigm``, declared through an entry point
(``privevo.generators``, ``privevo.embedders``, ``privevo.paradigms``; see the README's
"Bring your own model"). Names are imported on first use, so ``import privevo`` stays cheap
(no Ray, no torch).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> (module, attribute)
_API = {
    "synthesize": ("privevo.pipelines.evolution", "synthesize"),
    "rebuild": ("privevo.pipelines.evolution", "rebuild"),
    "RunResult": ("privevo.pipelines.evolution", "RunResult"),
    "RunObserver": ("privevo.pipelines.hooks", "RunObserver"),
    "audit": ("privevo.pipelines.audit.job", "run_audit"),
    "load_audit_config": ("privevo.pipelines.audit.job", "load_audit_config"),
    "AuditConfig": ("privevo.pipelines.audit.config", "AuditConfig"),
    "RunConfig": ("privevo.pipelines.config", "RunConfig"),
    "load_config": ("privevo.pipelines.config", "load_config"),
    "ConfigError": ("privevo.pipelines.config", "ConfigError"),
    "private_evolution": ("privevo.pipelines.pe", "private_evolution"),
    "Generator": ("privevo.actors.generators.base", "Generator"),
    "GeneratorContext": ("privevo.actors.generators.base", "GeneratorContext"),
    "SampleBatch": ("privevo.actors.generators.base", "SampleBatch"),
    "Embedder": ("privevo.actors.embedders.pixels", "Embedder"),
    "Paradigm": ("privevo.actors.paradigms.base", "Paradigm"),
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'privevo' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
