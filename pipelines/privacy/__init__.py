"""The privacy core: discrete Gaussian release, secure noise, PLD accounting, the privacy ledger
and its release records.

This is the part a privacy reviewer must read. It imports numpy, scipy, dp_accounting and (only
when secure noise is asked for) opendp; never ray or torch, and it uses no global RNG.
"""

from .accounting import (
    DEFAULT_EPS_ERROR,
    PLAN_TOLERANCE,
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
from .ledger import LEDGER_FILE, LOST_DIR, RELEASES_DIR, PrivacyLedger, RepairResult
from .mechanism import (
    MECHANISM,
    NEIGHBOURS,
    NOISE_SOURCE_SECURE,
    NOISE_SOURCE_SEEDED,
    NOISE_SOURCES,
    GaussianMechanism,
    InsecureNoiseWarning,
    NoiseSource,
    noise_source_of,
    secure_noise,
    seeded_noise,
)
from .records import ReleaseRecord

__all__ = [
    "DEFAULT_EPS_ERROR",
    "LEDGER_FILE",
    "LOST_DIR",
    "MECHANISM",
    "NEIGHBOURS",
    "NOISE_SOURCES",
    "NOISE_SOURCE_SECURE",
    "NOISE_SOURCE_SEEDED",
    "PLAN_TOLERANCE",
    "RELEASES_DIR",
    "BudgetError",
    "EpsilonBound",
    "GaussianMechanism",
    "InsecureNoiseWarning",
    "NoiseSource",
    "PrivacyLedger",
    "PrivacyPlan",
    "ReleaseRecord",
    "RepairResult",
    "calibrate_noise_multiplier",
    "calibration_eps_error",
    "delta_closed_form",
    "epsilon_closed_form",
    "epsilon_spent",
    "gaussian_mu",
    "noise_multiplier_closed_form",
    "noise_source_of",
    "plan_releases",
    "secure_noise",
    "seeded_noise",
]
