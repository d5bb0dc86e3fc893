"""The ``privevo`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# The local Ray instance privevo starts uses token authentication: Ray's own default, said
# explicitly so that Ray neither warns at every start nor switches mode when ~/.ray/auth_token
# appears. Set here, before Ray is imported: Ray reads the mode once per process. An explicit
# RAY_AUTH_MODE (the tests set "disabled") is respected.
os.environ.setdefault("RAY_AUTH_MODE", "token")

from privevo.pipelines import submit as jobs
from privevo.pipelines.config import ConfigError, load_config
from privevo.pipelines.interrupts import interrupt_of, interrupts_as_exceptions, where_it_failed, write_error_log

INSECURE_NOISE_ENV = "PRIVEVO_INSECURE_NOISE_SEED"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("privevo")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privevo", description="DP synthetic data with Private Evolution on Ray")
    parser.add_argument("--version", action="version", version=f"privevo {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthesize", help="make DP synthetic data with Private Evolution")
    syn.add_argument("config", nargs="?", help="run config (YAML); with --resume, defaults to the run's own")
    syn.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set privacy.epsilon=4 (repeatable)")
    syn.add_argument("--out", help="run directory to create (default: runs/NAME-TIMESTAMP)")
    syn.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    syn.add_argument("--quiet", action="store_true", help="no progress bars")
    syn.add_argument("--print-report", action="store_true",
                     help="also print report.json to stdout between marker lines (for `privevo submit`)")
    reb = sub.add_parser("rebuild", help="rebuild a finished run's outputs from its recorded releases, "
                                         "without opening the private data or spending budget")
    reb.add_argument("run_dir", help="a finished synthesize run directory")
    reb.add_argument("--out", required=True, help="directory to create for the rebuilt run")
    reb.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="change what does not touch the releases (evaluation.*, resources.*, name, "
                          "data.heldout_path) (repeatable)")
    reb.add_argument("--quiet", action="store_true", help="no progress bars")
    aud = sub.add_parser("audit", help="membership-inference audit of training paradigms")
    aud.add_argument("config", help="audit config (YAML)")
    aud.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field (repeatable)")
    aud.add_argument("--out", help="audit directory to create (default: runs/NAME-TIMESTAMP)")
    aud.add_argument("--print-report", action="store_true",
                     help="also print report.json to stdout between marker lines (for `privevo submit`)")
    for job in (syn, aud):
        job.add_argument("--expect-code", metavar="DIGEST",
                         help="refuse to run unless this node's privevo code has this digest (privevo submit adds it)")
    _add_cluster_commands(sub)
    return parser


def _add_cluster_commands(sub) -> None:
    address_help = "Ray job server, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)"
    sbm = sub.add_parser("submit", help="run a synthesize or audit job on a Ray cluster (Ray Jobs API)")
    sbm.add_argument("config", help="run config (YAML), inside the uploaded working directory")
    sbm.add_argument("--address", help=address_help)
    sbm.add_argument("--job", choices=["synthesize", "audit"], default="synthesize", help="which job to run")
    sbm.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field (repeatable)")
    sbm.add_argument("--out", help="run directory on the cluster (default: ~/privevo-runs/NAME-TIMESTAMP)")
    sbm.add_argument("--runtime-env", metavar="YAML",
                     help="Ray runtime_env for the job (default: the one in cluster/runtime_env.yaml)")
    sbm.add_argument("--launcher", default="privevo",
                     help="command that runs privevo on the cluster (default: privevo)")
    sbm.add_argument("--no-local-check", action="store_true",
                     help="skip the local config check (data or model paths that exist only on the cluster)")
    sbm.add_argument("--wait", action="store_true", help="wait for the job to end; exit 1 unless it succeeded")
    sbm.add_argument("--follow", action="store_true", help="stream the job's log until it ends (implies --wait)")
    sbm.add_argument("--report-to", metavar="FILE", help="write the job's report.json here (implies --wait)")
    sts = sub.add_parser("status", help="status of a submitted job (exit 1 if it failed or was stopped)")
    sts.add_argument("job_id")
    sts.add_argument("--address", help=address_help)
    lgs = sub.add_parser("logs", help="log of a submitted job")
    lgs.add_argument("job_id")
    lgs.add_argument("--address", help=address_help)
    lgs.add_argument("--follow", action="store_true", help="stream the log until the job ends")


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
    from privevo.pipelines.evolution import synthesize
    from privevo.pipelines.report import summary_lines

    jobs.check_code(args.expect_code)
    if args.resume and args.out:
        raise ConfigError("command line", "--out", "give either --out or --resume, not both")
    if args.config is None and not args.resume:
        raise ConfigError("command line", "CONFIG", "a config file is required (or --resume RUN_DIR)")
    config_path = Path(args.config) if args.config else Path(args.resume) / "config.yaml"
    config = load_config(config_path, args.overrides)
    if args.resume:
        run_dir = Path(args.resume)
    elif args.out:
        run_dir = Path(args.out).expanduser()
    else:
        run_dir = Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.active_run_dir = run_dir
    args.resume_with = f"privevo synthesize --resume {run_dir}"
    result = synthesize(
        config, run_dir, source=str(config_path), resume=bool(args.resume),
        insecure_noise_seed=_insecure_noise_seed(), progress=not args.quiet,
    )
    print("\n".join(summary_lines(result.report, result.run_dir)))
    if args.print_report:
        jobs.print_report(json.loads((result.run_dir / "report.json").read_text()))
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from privevo.pipelines.evolution import rebuild
    from privevo.pipelines.report import summary_lines

    config = (load_config(Path(args.run_dir) / "config.yaml", args.overrides, private_data=False)
              if args.overrides else None)
    result = rebuild(args.run_dir, Path(args.out).expanduser(), progress=not args.quiet, config=config)
    print("\n".join(summary_lines(result.report, result.run_dir)))
    print(f"rebuilt from       {args.run_dir} (recorded releases only; no private data read, no budget spent)")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from privevo.pipelines.audit.job import load_audit_config, run_audit, summary_table

    jobs.check_code(args.expect_code)
    config = load_audit_config(args.config, args.overrides)
    out = Path(args.out).expanduser() if args.out else Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.active_run_dir = out
    args.resume_with = f"privevo audit {args.config} --out {out}" + "".join(f" --set {o}" for o in args.overrides)
    report = run_audit(config, out, source=args.config)
    print(f"audit directory    {out}")
    print(summary_table(report))
    if args.print_report:
        jobs.print_report(json.loads((out / "report.json").read_text()))
    return 0


def _submit(args: argparse.Namespace) -> int:
    import shlex

    launcher = shlex.split(args.launcher)
    if not launcher:
        raise ConfigError("command line", "--launcher", "must name a command")
    follow = args.follow
    wait = args.wait or follow or bool(args.report_to)
    job_id = jobs.submit(
        args.config, args.address, job=args.job, overrides=args.overrides, out=args.out,
        runtime_env=args.runtime_env, launcher=launcher, check_locally=not args.no_local_check,
    )
    print(f"submitted job      {job_id}", flush=True)
    if not wait:
        return 0
    client = jobs.job_client(args.address)
    try:
        state = jobs.wait_for(job_id, args.address, follow=follow, client=client)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {job_id} goes on (privevo status / privevo logs; "
              "`ray job stop` ends it)", file=sys.stderr)
        return 130
    _, message = jobs.status(job_id, args.address, client=client)
    print(f"job {job_id}: {state}" + (f" ({message})" if message and state != "SUCCEEDED" else ""))
    if state != "SUCCEEDED":
        print(f"its log: privevo logs {job_id}" + (f" --address {args.address}" if args.address else ""))
        return 1
    if args.report_to:
        jobs.fetch_report(job_id, args.address, args.report_to, client=client)
        print(f"report             {args.report_to}")
    return 0


def _status(args: argparse.Namespace) -> int:
    state, message = jobs.status(args.job_id, args.address)
    print(f"job {args.job_id}: {state}" + (f" ({message})" if message else ""))
    return 1 if state in ("FAILED", "STOPPED") else 0


def _logs(args: argparse.Namespace) -> int:
    jobs.logs(args.job_id, args.address, follow=args.follow)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"synthesize": _synthesize, "audit": _audit, "rebuild": _rebuild,
                "submit": _submit, "status": _status, "logs": _logs}
    try:
        with interrupts_as_exceptions():
            return commands[args.command](args)
    except ConfigError as exc:
        print(f"privevo: error: {exc}", file=sys.stderr)
        return 2
    except jobs.SubmitError as exc:
        print(f"privevo: error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:  # noqa: BLE001 - no traceback reaches a user
        interrupted = interrupt_of(exc)
        if interrupted is not None:
            print(_stopped(args, interrupted.signal_name), file=sys.stderr)
            return interrupted.exit_code
        if not isinstance(exc, Exception):
            raise  # SystemExit with another code, GeneratorExit: not ours to translate
        log = write_error_log(exc, getattr(args, "active_run_dir", None))
        where = where_it_failed(exc)
        print(f"privevo: error: unexpected {type(exc).__name__}" + (f" in {where}" if where else "")
              + (f"; the trace is in {log}" if log else "") + (f"; {_resume_hint(args)}" if _resume_hint(args) else ""),
              file=sys.stderr)
        return 1


def _resume_hint(args: argparse.Namespace) -> str:
    """How to go on with an interrupted or failed run ("" when it spent nothing and left nothing)."""
    run_dir = getattr(args, "active_run_dir", None)
    if run_dir is None or not Path(run_dir).exists():
        return ""
    return f"resume with: {args.resume_with}"


def _stopped(args: argparse.Namespace, signal_name: str) -> str:
    hint = _resume_hint(args)
    if hint:
        return f"privevo: stopped by {signal_name}; {hint}"
    return f"privevo: stopped by {signal_name}" + (
        "; no release was drawn: nothing was spent and nothing kept" if getattr(args, "active_run_dir", None) else "")


if __name__ == "__main__":
    sys.exit(main())
