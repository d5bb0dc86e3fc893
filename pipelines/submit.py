"""Running privevo's jobs on a Ray cluster through the Ray Jobs API.

``privevo submit`` uploads the project folder (the job's ``working_dir``) to the
cluster's job server and runs ``privevo synthesize|audit CONFIG ...`` there as a
Ray job; the job's driver joins the cluster (Ray sets ``RAY_ADDRESS`` for it), so
the same config runs unchanged on a laptop and on a cluster.

Four things are decided here rather than on the cluster:

- the config is validated locally first, with the same checks the job runs before
  it reads private data, so a bad config is refused with its file and field named
  before anything is uploaded or submitted;
- the entrypoint is one shell command line built with :func:`shlex.join`, so a
  path or an override value can never be read as shell syntax;
- the code is the privevo installed on the cluster's nodes (the upload carries configs; the
  repository root is the ``privevo`` package, which a working_dir cannot put on a node's path),
  so the entrypoint carries the submitter's :func:`code_digest` and the job refuses to run on a
  node whose privevo differs (``--expect-code``), instead of silently running other code;
- the job's report.json lives on the cluster's disk, so the job prints it to its
  log between two marker lines (``--print-report``) and :func:`fetch_report` takes
  it back out of the log, checking its SHA-256 so a truncated log is refused.

Authentication: a cluster started with Ray's token authentication on
(``RAY_AUTH_MODE=token``) refuses requests without the token. With
``RAY_AUTH_MODE=token`` in the submitting shell, Ray's own client attaches the
token it finds (``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``,
else ``~/.ray/auth_token``); with ``RAY_AUTH_MODE`` unset, :func:`auth_headers`
looks in the same places and sends the token it finds as a bearer token. The token
is never printed or logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import yaml

from privevo.pipelines.config import ConfigError
from privevo.pipelines.files import write_json_atomic

JobKind = Literal["synthesize", "audit"]
JOBS: tuple[str, ...] = ("synthesize", "audit")
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

# What the job's working_dir upload leaves out (gitignore syntax; Ray also honours
# the project's .gitignore). ``private/`` keeps any run's private folder from
# being copied to the cluster's object store.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "/.venv/", "/runs/", ".git/", "/benchmarks/results/", "__pycache__/", "private/",
    "*.egg-info/", ".pytest_cache/", ".hypothesis/",
)
# The runtime_env every submitted job gets unless the caller gives one; kept equal
# to cluster/runtime_env.yaml (a test checks). RAY_AUTH_MODE is deliberately not
# set: the job keeps the cluster's own authentication mode and token.
DEFAULT_RUNTIME_ENV: dict[str, Any] = {
    "working_dir": ".",
    "excludes": list(DEFAULT_EXCLUDES),
    "env_vars": {"PYTHONUNBUFFERED": "1"},
}

ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_REPORT_BEGIN = "=== privevo report.json begin sha256="
_REPORT_END = "=== privevo report.json end sha256="


class SubmitError(RuntimeError):
    """The job server could not be reached, refused the request, or the job failed."""


class ReportNotFound(SubmitError):
    """A job log holds no complete report (the job failed first, or the log is truncated)."""


# --------------------------------------------------------------------------- the report in the log


def format_report(report: dict[str, Any]) -> str:
    """``report`` as three log lines: a begin marker, the JSON on one line, an end marker.

    Both markers carry the payload's SHA-256, so a reader can tell the payload
    apart from any log line written in between and knows when it is incomplete.
    """
    payload = json.dumps(report, separators=(",", ":"), allow_nan=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    return f"{_REPORT_BEGIN}{digest} ===\n{payload}\n{_REPORT_END}{digest} ===\n"


def print_report(report: dict[str, Any], file: IO[str] | None = None) -> None:
    """Write ``report`` to ``file`` (stdout) in the form :func:`parse_report` reads back."""
    stream = file if file is not None else sys.stdout
    stream.write(format_report(report))
    stream.flush()


def parse_report(log: str) -> dict[str, Any]:
    """The last complete report printed by :func:`print_report` in ``log``.

    Lines other than the payload may sit between the markers (other processes'
    output); the payload is the line whose SHA-256 the markers name. Raises
    :class:`ReportNotFound` when there is no begin marker, no matching end marker
    or no line with the right digest (a truncated or damaged log).
    """
    lines = log.splitlines()
    begins = [i for i, line in enumerate(lines) if line.startswith(_REPORT_BEGIN)]
    if not begins:
        raise ReportNotFound("the job log holds no report (did the job finish?)")
    start = begins[-1]
    digest = lines[start][len(_REPORT_BEGIN):].removesuffix(" ===").strip()
    end_line = f"{_REPORT_END}{digest} ==="
    try:
        end = lines.index(end_line, start + 1)
    except ValueError:
        raise ReportNotFound("the job log ends inside the report (truncated log)") from None
    for line in lines[start + 1:end]:
        if hashlib.sha256(line.encode()).hexdigest() == digest:
            return json.loads(line)
    raise ReportNotFound("the report in the job log does not match its checksum (damaged log)")


# --------------------------------------------------------------------------- job server access


def resolve_address(address: str | None) -> str:
    """``address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``; refused if none is set."""
    if address:
        return address
    for name in ADDRESS_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    raise ConfigError(
        "command line", "--address",
        "no job server address: give --address http://HEAD:8265 or set RAY_ADDRESS",
    )


def _find_token() -> str | None:
    """The token from the places Ray reads it, in Ray's order of precedence."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token_path:
        try:
            token = Path(token_path).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError("RAY_AUTH_TOKEN_PATH", "(environment)", f"cannot read the token file: {exc.strerror}") from None
        if not token:
            raise ConfigError("RAY_AUTH_TOKEN_PATH", "(environment)", "the token file is empty")
        return token
    default = Path.home() / ".ray" / "auth_token"
    try:
        return default.read_text().strip() or None
    except OSError:
        return None


def auth_headers() -> dict[str, str]:
    """HTTP headers carrying the cluster's auth token, if this shell has one.

    ``RAY_AUTH_MODE=token``: Ray's client attaches the token itself, so none are
    added here. ``RAY_AUTH_MODE=disabled``: none. Unset: the token from
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (Ray's
    order), if any, as ``Authorization: Bearer``.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode:
        return {}
    token = _find_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def _explicit_address():
    # Ray's client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it
    # is given; privevo's resolved address (flag first, then those variables) wins.
    saved = {name: os.environ.pop(name) for name in ADDRESS_ENV_VARS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def job_client(address: str | None = None):
    """A ``JobSubmissionClient`` for the job server at ``address`` (see :func:`resolve_address`)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        with _explicit_address():
            return JobSubmissionClient(url, headers=auth_headers())
    except ConnectionError:
        raise SubmitError(f"cannot reach a Ray job server at {url}") from None
    except AuthenticationError as exc:
        # Ray's explanation of a 401/403; it never contains the token.
        raise SubmitError(f"the job server at {url} refused the token (or its absence): {exc}") from None
    except RuntimeError as exc:
        raise SubmitError(f"the job server at {url} refused the request: {exc}") from None


# --------------------------------------------------------------------------- building the job


def load_runtime_env(path: str | Path) -> dict[str, Any]:
    """A runtime_env from a YAML file (data only: ``yaml.safe_load``)."""
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(source, "(file)", f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, "(file)", f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(source, "(top level)", "expected a mapping (a Ray runtime_env)")
    env = raw.get("env_vars") or {}
    if not isinstance(env, dict):
        raise ConfigError(source, "env_vars", "expected a mapping of names to strings")
    if any(name.startswith("RAY_AUTH") for name in env):
        raise ConfigError(
            source, "env_vars",
            "must not set RAY_AUTH_* (jobs keep the cluster's own authentication mode and token)",
        )
    return raw


def code_digest(root: str | Path | None = None) -> str:
    """SHA-256 of privevo's code (every ``.py`` file of the package ``root``, default the one
    imported, with its path), so a job can check its node runs the code it was submitted from."""
    if root is None:
        import privevo

        root = Path(privevo.__file__).parent
    root = Path(root)
    digest = hashlib.sha256()
    files = [root / "__init__.py", *sorted((root / "pipelines").rglob("*.py")), *sorted((root / "actors").rglob("*.py"))]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def check_code(expected: str | None) -> None:
    """Refuse to run a submitted job on a node whose installed privevo is not the submitter's code."""
    if expected is not None and expected != (here := code_digest()):
        raise ConfigError(
            "command line", "--expect-code",
            f"the job was submitted from privevo code {expected}, but this node runs the privevo installed on "
            f"it (code {here}); the uploaded working_dir carries configs, not the code: install the same "
            "privevo on the cluster (cluster/Dockerfile) or submit from the version it has",
        )


def entrypoint(
    job: JobKind,
    config: str,
    overrides: Sequence[str] = (),
    out: str | None = None,
    launcher: Sequence[str] = ("privevo",),
    code: str | None = None,
) -> str:
    """The job's shell command line, every argument quoted with :func:`shlex.join`; ``code``: the
    submitter's :func:`code_digest`, checked by the job before anything runs."""
    if job not in JOBS:
        raise ConfigError("command line", "--job", f"expected one of {list(JOBS)}, got {job!r}")
    argv = [*launcher, job, config]
    for item in overrides:
        argv += ["--set", item]
    if out:
        argv += ["--out", out]
    if code:
        argv += ["--expect-code", code]
    if job == "synthesize":
        argv.append("--quiet")
    argv.append("--print-report")
    return shlex.join(argv)


def _relative_config(config_path: Path, working_dir: Path) -> str:
    try:
        return config_path.resolve().relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise ConfigError(
            str(config_path), "(file)",
            f"must lie inside the job's working_dir {working_dir.resolve()} (only that folder is uploaded)",
        ) from None


def check_job_config(config_path: str | Path, job: JobKind, overrides: Sequence[str] = (),
                     working_dir: str | Path = ".") -> Any:
    """Validate the job's config here, as the job will on the cluster before reading private data.

    synthesize: the typed config, the privacy budget plan, the model options, the
    data description (labels and file names, never samples) and the vote settings
    (``pipelines.evolution.check_config``). audit: the typed audit config and every
    synthesize config its PE paradigms name. Raises ConfigError naming file and field.
    """
    if job == "synthesize":
        from privevo.pipelines.config import load_config
        from privevo.pipelines.evolution import check_config

        config = load_config(config_path, list(overrides))
        check_config(config, str(config_path), this_machine=False)  # the job's driver checks its own memory
        return config
    if job == "audit":
        from privevo.pipelines.audit.job import load_audit_config
        from privevo.pipelines.audit.pe_runs import pe_config_template

        config = load_audit_config(config_path, list(overrides))
        for index, paradigm in enumerate(config.paradigms):
            if paradigm.kind == "pe":
                # The job resolves this path in its working directory (each run's data is the
                # audit run's own private set).
                pe_config_template(config, index, str(config_path), base_dir=working_dir)
        return config
    raise ConfigError("command line", "--job", f"expected one of {list(JOBS)}, got {job!r}")


def submit(
    config_path: str | Path,
    address: str | None = None,
    *,
    job: JobKind = "synthesize",
    overrides: Sequence[str] = (),
    out: str | None = None,
    runtime_env: dict[str, Any] | str | Path | None = None,
    launcher: Sequence[str] = ("privevo",),
    check_locally: bool = True,
    wait: bool = False,
    follow: bool = False,
    timeout: float | None = None,
) -> str:
    """Submit ``privevo JOB CONFIG`` to the Ray cluster at ``address``; return the job id
    (:func:`status` tells how it ended).

    The config path is taken relative to the runtime_env's ``working_dir`` (default:
    the current folder, uploaded without .venv, runs/, .git and benchmark results).
    ``check_locally=False`` skips the local check, for configs whose data or model
    paths exist only on the cluster (the job checks them there before reading private
    data). ``launcher`` is the command that runs privevo on the cluster. ``wait``
    blocks until the job ends; ``follow`` also streams its log to stdout. ``out``
    is the run directory on the cluster (default ``~/privevo-runs/NAME-TIMESTAMP``
    on the node that runs the job's driver).
    """
    if job not in JOBS:
        raise ConfigError("command line", "--job", f"expected one of {list(JOBS)}, got {job!r}")
    if isinstance(runtime_env, (str, Path)):
        env = load_runtime_env(runtime_env)
    else:
        env = json.loads(json.dumps(runtime_env if runtime_env is not None else DEFAULT_RUNTIME_ENV))
    working_dir = Path(env.get("working_dir") or ".")
    env["working_dir"] = str(working_dir.resolve())
    config_path = Path(config_path)
    relative = _relative_config(config_path, working_dir)
    name = config_path.stem
    if check_locally:
        name = check_job_config(config_path, job, overrides, working_dir).name
    if out is None:
        # The job's own working_dir copy is temporary: default to a folder that stays.
        out = f"~/privevo-runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = entrypoint(job, relative, overrides, out, launcher, code=code_digest())
    client = job_client(address)
    try:
        job_id = client.submit_job(entrypoint=command, runtime_env=env,
                                   metadata={"privevo_job": job, "config": relative})
    except RuntimeError as exc:
        raise SubmitError(f"the job server refused the job: {exc}") from None
    if wait or follow:
        wait_for(job_id, address, follow=follow, timeout=timeout, client=client)
    return job_id


# --------------------------------------------------------------------------- following a job


def status(job_id: str, address: str | None = None, *, client=None) -> tuple[str, str]:
    """The job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and Ray's message."""
    client = client or job_client(address)
    try:
        info = client.get_job_info(job_id)
    except RuntimeError as exc:
        raise SubmitError(f"no job {job_id!r} on the job server: {exc}") from None
    return str(info.status.value if hasattr(info.status, "value") else info.status), info.message or ""


def logs(job_id: str, address: str | None = None, *, follow: bool = False,
         file: IO[str] | None = None, client=None) -> str:
    """The job's log so far (``follow``: streamed to ``file`` until the job ends); returns the text."""
    client = client or job_client(address)
    stream = file if file is not None else sys.stdout
    if not follow:
        try:
            text = client.get_job_logs(job_id)
        except RuntimeError as exc:
            raise SubmitError(f"no logs for job {job_id!r}: {exc}") from None
        stream.write(text)
        stream.flush()
        return text

    async def _tail() -> str:
        chunks = []
        async for chunk in client.tail_job_logs(job_id):
            chunks.append(chunk)
            stream.write(chunk)
            stream.flush()
        return "".join(chunks)

    try:
        return asyncio.run(_tail())
    except RuntimeError as exc:
        raise SubmitError(f"lost the log stream of job {job_id!r}: {exc}") from None


def wait_for(job_id: str, address: str | None = None, *, follow: bool = False,
             timeout: float | None = None, poll: float = 1.0, client=None) -> str:
    """Block until the job reaches a terminal status (``follow``: streaming its log); return it."""
    client = client or job_client(address)
    if follow:
        logs(job_id, address, follow=True, client=client)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state, _ = status(job_id, address, client=client)
        if state in TERMINAL_STATUSES:
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"job {job_id} still {state} after {timeout:g} s")
        time.sleep(poll)


def fetch_report(job_id: str, address: str | None = None, dest: str | Path | None = None,
                 *, client=None) -> dict[str, Any]:
    """The job's report.json, taken from its log; also written to ``dest`` when given."""
    client = client or job_client(address)
    try:
        text = client.get_job_logs(job_id)
    except RuntimeError as exc:
        raise SubmitError(f"no logs for job {job_id!r}: {exc}") from None
    report = parse_report(text)
    if dest is not None:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(dest, report)
    return report
