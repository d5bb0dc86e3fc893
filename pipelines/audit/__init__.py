"""The audit: canaries, LiRA and RMIA, mechanism- and synthetic-data-level tests and their
statistics (numpy/scipy/sklearn).

"Does training with synthetic data truly protect privacy?" (Zhao & Zhang, ICLR 2025): canaries
in exactly half of the runs of a paradigm, LiRA on every run, and TPR at low FPR, AUC and an
empirical epsilon lower bound (one-sided, Clopper-Pearson, threshold chosen on half of the runs and
scored on the other half) beside its plug-in point estimate.
"""

from .canaries import (
    SecretStrings,
    balanced_membership,
    choose_canaries,
    iid_membership,
    mislabel,
    ood_images,
    paired_membership,
    secret_strings,
)
from .levels import data_only_scores, mechanism_statistic, synthetic_scores, vote_matrix
from .lira import lira_offline, lira_online, logit_confidence
from .mechanism import gaussian_epsilon, project_release, simulate_gaussian_audit
from .metrics import (
    auc,
    bootstrap_tpr_at_fpr,
    clopper_pearson,
    epsilon_lower_bound,
    is_violation,
    one_run_epsilon_lower,
    one_run_guesses,
    roc,
    tpr_at_fpr,
)
from .rmia import offline_coefficients, rmia_log_ratios, rmia_offline, rmia_online, rmia_score

__all__ = [
    "SecretStrings",
    "auc",
    "balanced_membership",
    "bootstrap_tpr_at_fpr",
    "choose_canaries",
    "clopper_pearson",
    "data_only_scores",
    "epsilon_lower_bound",
    "gaussian_epsilon",
    "iid_membership",
    "is_violation",
    "lira_offline",
    "lira_online",
    "logit_confidence",
    "mechanism_statistic",
    "mislabel",
    "offline_coefficients",
    "one_run_epsilon_lower",
    "one_run_guesses",
    "ood_images",
    "paired_membership",
    "project_release",
    "rmia_log_ratios",
    "rmia_offline",
    "rmia_online",
    "rmia_score",
    "roc",
    "secret_strings",
    "simulate_gaussian_audit",
    "synthetic_scores",
    "tpr_at_fpr",
    "vote_matrix",
]
