"""The ``privevo`` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pipelines.config import ConfigError, load_config

INSECURE_NOISE_ENV = "PRIVEVO_INSECURE_NOISE_SEED"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privevo", description="DP synthetic data with Private Evolution on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthesize", help="make DP synthetic data with Private Evolution")
    syn.add_argument("config", nargs="?", help="run config (YAML); with --resume, defaults to the run's own")
    syn.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set privacy.epsilon=4 (repeatable)")
    syn.add_argument("--out", help="run directory to create (default: runs/NAME-TIMESTAMP)")
    syn.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    syn.add_argument("--quiet", action="store_true", help="no progress bars")
    aud = sub.add_parser("audit", help="membership-inference audit of training paradigms")
    aud.add_argument("config", help="audit config (YAML)")
    aud.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field (repeatable)")
    aud.add_argument("--out", help="audit directory to create (default: runs/NAME-TIMESTAMP)")
    return parser


def _insecure_noise_seed() -> int | None:
    value = os.environ.get(INSECURE_NOISE_ENV)
    if value is None:
        return None
    try:
        seed = int(value)
    except ValueError:
        raise ConfigError(INSECURE_NOISE_ENV, "(environment)", f"must be an integer, got {value!r}") from None
    print(
        f"WARNING: {INSECURE_NOISE_ENV} is set: release noise is seeded and reproducible. "
        "This run gives NO privacy; use it for tests only.",
        file=sys.stderr,
    )
    return seed


def _synthesize(args: argparse.Namespace) -> int:
    from pipelines.evolution import synthesize
    from pipelines.report import summary_lines

    if args.resume and args.out:
        raise ConfigError("command line", "--out", "give either --out or --resume, not both")
    if args.config is None and not args.resume:
        raise ConfigError("command line", "CONFIG", "a config file is required (or --resume RUN_DIR)")
    config_path = Path(args.config) if args.config else Path(args.resume) / "config.yaml"
    config = load_config(config_path, args.overrides)
    if args.resume:
        run_dir = Path(args.resume)
    elif args.out:
        run_dir = Path(args.out)
    else:
        run_dir = Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = synthesize(
        config, run_dir, source=str(config_path), resume=bool(args.resume),
        insecure_noise_seed=_insecure_noise_seed(), progress=not args.quiet,
    )
    print("\n".join(summary_lines(result.report, result.run_dir)))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from pipelines.audit.job import load_audit_config, run_audit, summary_table

    config = load_audit_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = run_audit(config, out)
    print(f"audit directory    {out}")
    print(summary_table(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "synthesize":
            return _synthesize(args)
        if args.command == "audit":
            return _audit(args)
    except ConfigError as exc:
        print(f"privevo: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
