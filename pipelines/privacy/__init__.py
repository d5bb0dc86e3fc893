"""The privacy core: Gaussian mechanism, noise calibration, PRV accounting, the privacy ledger.

This is the part a privacy reviewer must read. It imports numpy, scipy and prv_accountant only
(never ray or torch) and uses no global RNG.
"""

from .accounting import (
    DEFAULT_EPS_ERROR,
    BudgetError,
    EpsilonBound,
    PrivacyPlan,
    calibrate_noise_multiplier,
    calibration_eps_error,
    delta_closed_form,
    epsilon_closed_form,
    epsilon_spent,
    gaussian_mu,
    noise_multiplier_closed_form,
    plan_releases,
)
from .ledger import LEDGER_FILE, RELEASES_DIR, PrivacyLedger, ReleaseRecord, RepairResult
from .mechanism import (
    NOISE_SOURCE_OS,
    NOISE_SOURCE_SEEDED,
    NOISE_SOURCES,
    GaussianMechanism,
    InsecureNoiseWarning,
    noise_source_of,
    release_rng,
)

__all__ = [
    "DEFAULT_EPS_ERROR",
    "BudgetError",
    "EpsilonBound",
    "PrivacyPlan",
    "calibrate_noise_multiplier",
    "calibration_eps_error",
    "delta_closed_form",
    "epsilon_closed_form",
    "epsilon_spent",
    "gaussian_mu",
    "noise_multiplier_closed_form",
    "plan_releases",
    "LEDGER_FILE",
    "RELEASES_DIR",
    "PrivacyLedger",
    "ReleaseRecord",
    "RepairResult",
    "NOISE_SOURCE_OS",
    "NOISE_SOURCE_SEEDED",
    "NOISE_SOURCES",
    "GaussianMechanism",
    "InsecureNoiseWarning",
    "noise_source_of",
    "release_rng",
]
