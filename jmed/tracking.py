"""MLflow conventions in one place: tracking defaults, step runs, dataset inputs.

mlflow is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

import jmed

# Tag names jmed reads back (runs and model versions); every module uses these, never the strings.
STEP_TAG = "jmed.step"
BASE_TAG = "jmed.base_model"
ADAPTER_RUN_TAG = "jmed.adapter_run"  # on evaluate runs: the train run of the adapter, "none" for a base
TRAIN_RUN_TAG = "jmed.train_run"  # on model versions and pipeline runs
EVAL_RUN_TAG = "jmed.eval_run"
HOST_TAG, PID_TAG = "jmed.host", "jmed.pid"  # the process a step's run belongs to (for `reap`)
REAPED_TAG = "jmed.reaped"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, exactly; else a SQLite file in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<userinfo>[^/@\s]+)@")


def masked(text: str) -> str:
    """Any URL in `text` with its password (or a bare token) replaced by *** (`http://alice:***@host`):
    what jmed prints or logs about a tracking store, an error message included."""

    def hide(m):
        user, colon, _ = m.group("userinfo").partition(":")
        return f"{m.group('scheme')}{user + ':***' if colon else '***'}@"

    return _CREDENTIALS.sub(hide, str(text))


def shown_uri() -> str:
    """The tracking URI as it may be printed: credentials masked."""
    return masked(tracking_uri())


class StoreError(ValueError):
    """A tracking URI that cannot be a store, or a store that cannot be reached: one line, before any work."""


SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "file")
STORE_TIMEOUT_S = 30.0  # an unreachable tracking server fails a step within this (JMED_TRACKING_TIMEOUT)


def check_store(uri: str) -> None:
    """Refuse, in one line naming the (masked) URI, what can never be a store or cannot be reached."""
    shown = masked(uri)
    if uri != uri.strip() or any(c.isspace() for c in uri):
        raise StoreError(f"MLFLOW_TRACKING_URI {shown!r} contains white space: remove it (it would name another store)")
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme not in SCHEMES:
        raise StoreError(
            f"tracking URI {shown}: {scheme}:// is no tracking store; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if path is None or not str(path):
            raise StoreError(f"tracking URI {shown}: a SQLite store is sqlite:///<path of the database file>")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise StoreError(f"tracking URI {shown}: the folder {path.parent} does not exist or is not writable")
        if path.is_file() and path.stat().st_size and path.read_bytes()[:16] != b"SQLite format 3\x00":
            raise StoreError(f"tracking URI {shown}: {path} is not a SQLite database")
    elif not scheme or scheme == "file":
        path = Path(uri.removeprefix("file://"))
        if path.exists() and not path.is_dir():
            raise StoreError(
                f"tracking URI {shown}: {path} is a file, not a store; for a database file use sqlite:///{path}"
            )
    elif scheme in ("http", "https"):
        _reachable(uri, shown)


def _reachable(uri: str, shown: str) -> None:
    """Any answer from the server will do (401 included); no answer within the timeout is an error. MLflow's
    own requests get the same bound (its defaults retry for minutes) unless the user set them."""
    import requests

    timeout = float(os.environ.get("JMED_TRACKING_TIMEOUT", STORE_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as exc:
        if isinstance(exc, requests.Timeout):
            cause = "no answer (timeout)"
        elif isinstance(exc, requests.ConnectionError):
            cause = "no connection (refused, or no route to the host)"
        else:
            cause = type(exc).__name__
        raise StoreError(f"tracking server {shown} cannot be reached within {timeout:g} s: {cause}") from None


def setup():
    """Point mlflow at the tracking store, after `check_store`; returns the mlflow module. A new SQLite
    store is created under a lock beside it, so that several first commands at once do not race its
    schema migration (which corrupts it for good)."""
    import mlflow

    uri = tracking_uri()
    check_store(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # child processes (mlflow run, serve) see the same store
    if masked(uri) != uri:  # MLflow prints "View run at: <uri with the password>" after each run
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and uri not in _CREATED:
        _create_sqlite(uri)
    return mlflow


_CREATED: set[str] = set()


DRY_RUN_TAG = "jmed.dry_run"


def mark_launcher_run() -> str:
    """Under `mlflow run` (MLFLOW_RUN_ID), a step that runs nothing (`--dry-run`) marks the run MLflow
    opened for it before jmed started: tag `jmed.dry_run`, name `dry-run`, a description saying that
    nothing ran. It cannot be deleted now: `mlflow run` ends it after jmed exits, which fails on a
    deleted run. The next jmed step (`reap`, which every step calls; or `jmed runs reap`) deletes it
    once it has ended. Returns the run id marked ("" when there was none)."""
    run_id = os.environ.get("MLFLOW_RUN_ID", "")
    if not run_id:
        return ""
    from mlflow import MlflowClient

    setup()
    client = MlflowClient()
    for key, value in {
        DRY_RUN_TAG: "true",
        "mlflow.runName": "dry-run",
        "mlflow.note.content": "Dry run: jmed printed the resolved configuration; nothing ran or was logged. "
        "The next jmed command deletes this run.",
    }.items():
        client.set_tag(run_id, key, value)
    return run_id


def _delete_dry_runs(client, experiments: list[str]) -> list[str]:
    """Delete the ended runs `mark_launcher_run` marked (the store's trash keeps them until `mlflow gc`)."""
    runs = client.search_runs(
        experiments, f"tags.`{DRY_RUN_TAG}` = 'true' and attributes.status != 'RUNNING'", max_results=1000
    )
    for run in runs:
        client.delete_run(run.info.run_id)
    return [r.info.run_id for r in runs]


def _create_sqlite(uri: str) -> None:
    import fcntl

    from mlflow import MlflowClient

    lock = Path(uri[len("sqlite:///") :] + ".lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        try:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # the tracking schema, migrated once
            client.search_registered_models(max_results=1)  # and the registry's
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    _CREATED.add(uri)


def git_commit() -> str:
    """The commit of the jmed checkout, with "-dirty" if it has uncommitted changes; "" outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{sha}-dirty" if sha and dirty else sha


def code_version() -> str:
    commit = git_commit()
    return f"{jmed.__version__}+{commit[:12]}" if commit else jmed.__version__


def slug(model_id: str) -> str:
    """Registry slug: lower case, "/" -> "--", other characters outside [a-z0-9._-] -> "-"."""
    import re

    s = model_id.lower().replace("/", "--")
    return re.sub(r"[^a-z0-9._-]", "-", s)


@contextlib.contextmanager
def step_run(step: str, run_name: str | None = None, nested: bool = False, tags: dict | None = None):
    """A run for one jmed step; ends FINISHED, FAILED on an error, KILLED on Ctrl-C — never RUNNING.

    Inside `mlflow run` the run already exists (MLFLOW_RUN_ID) and is resumed; `nested=True` makes
    a child of the active run (pipelines).
    """
    mlflow = setup()
    active = mlflow.active_run()
    if active is not None and not nested:
        run = active
        own = False
    else:
        run = mlflow.start_run(run_name=run_name, nested=nested)
        own = True
    reap(quiet=True)  # cheap: one query for RUNNING runs of this host whose process is gone
    mlflow.set_tags(
        {
            STEP_TAG: step,
            "jmed.version": jmed.__version__,
            "jmed.code_version": code_version(),
            HOST_TAG: _host(),
            PID_TAG: str(os.getpid()),
            **(tags or {}),
        }
    )
    try:
        yield run
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or SIGTERM (jmed.cli turns it into SystemExit)
        end(run.info.run_id, "FINISHED" if isinstance(exc, SystemExit) and not exc.code else "KILLED")
        raise
    except BaseException:
        end(run.info.run_id, "FAILED")
        raise
    else:
        if own:
            end(run.info.run_id, "FINISHED")


def _host() -> str:
    import socket

    return socket.gethostname()


def alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs. A zombie (exited, not yet reaped by its parent)
    is gone: it holds nothing and will never release what it held."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def reap(quiet: bool = False) -> list[str]:
    """End as KILLED the RUNNING runs of jmed steps on this host whose process is gone (kill -9, a
    crash, a power cut), tagged `jmed.reaped` with why; delete the ended dry runs (`mark_launcher_run`). Runs of other hosts, runs without jmed's host
    and pid tags, and runs whose process lives are never touched. Returns the run ids ended.
    `quiet`: a store that cannot be searched is reported, not raised (every step calls this)."""
    import time

    import mlflow
    from mlflow.exceptions import MlflowException

    client, host, ended = mlflow.MlflowClient(), _host(), []
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = (
            client.search_runs(
                experiments, f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'", max_results=1000
            )
            if experiments
            else []
        )
        if experiments:
            _delete_dry_runs(client, experiments)
    except MlflowException as exc:
        if not quiet:
            raise
        print(f"[jmed] could not look for abandoned runs: {exc}")
        return []
    for run in runs:
        pid = run.data.tags.get(PID_TAG, "")
        if not pid.isdigit() or alive(int(pid)) or run.info.status != "RUNNING":
            continue
        client.set_tag(
            run.info.run_id,
            REAPED_TAG,
            f"process {pid} on {host} was gone at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; ended KILLED",
        )
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    if ended:
        print(f"[jmed] ended {len(ended)} abandoned run(s) KILLED (their process was gone): {', '.join(ended)}")
    return ended


def end(run_id: str, status: str, attempts: int = 5) -> None:
    """End a run with `status`. Retried: a SQLite store busy with another writer (the system-metrics
    thread, say) can refuse one write, and a run must never be left RUNNING."""
    import time

    import mlflow

    for attempt in range(attempts):
        try:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run(status)
            else:
                mlflow.MlflowClient().set_terminated(run_id, status)
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def log_params(params: dict) -> None:
    """Log params (stringified, truncated to MLflow's limit), skipping keys the run already has.

    Under `mlflow run`, the parameters the user passed are logged before jmed starts; explicit values
    always win over defaults and presets, so the logged value is already the resolved one.
    """
    import mlflow

    run = mlflow.active_run()
    present = mlflow.get_run(run.info.run_id).data.params if run else {}
    flat = {k: ("" if v is None else str(v))[:6000] for k, v in params.items() if k not in present}
    if flat:
        mlflow.log_params(flat)


def log_dataset(questions, name: str, path: str, digest: str, context: str) -> None:
    """Record a dataset as a run input (`mlflow.log_input`) with jmed's content digest."""
    import mlflow
    import pandas as pd

    df = pd.DataFrame(
        [
            {
                "id": q.id,
                "stem": q.stem,
                "choices": list(getattr(q, "choices", ())),
                "answer": [list(a) for a in getattr(q, "answer", ())],
            }
            for q in questions
        ]
        if questions and hasattr(questions[0], "stem")
        else [{"id": r.id, "instruction": r.instruction, "input": r.input, "output": r.output} for r in questions]
    )
    ds = mlflow.data.from_pandas(df, source=str(path), name=name, digest=digest[:36])
    mlflow.log_input(ds, context=context)


def evaluate_runs(client, experiment_ids=None, base_slug: str = "", adapters_only: bool = False) -> list:
    """The one query for FINISHED evaluate runs (all experiments unless given; optionally one base
    model). `adapters_only`: runs of an adapter whose train run is known (what promotion compares);
    otherwise base-model runs and adapters of unknown origin too (what a comparison table shows)."""
    exps = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    flt = f"tags.`{STEP_TAG}` = 'evaluate' and attributes.status = 'FINISHED'"
    if base_slug:
        flt += f" and tags.`{BASE_TAG}` = '{base_slug}'"
    runs, token = [], None
    while True:
        page = client.search_runs(exps, flt, max_results=1000, page_token=token)
        runs += [
            r
            for r in page
            if not adapters_only or r.data.tags.get(ADAPTER_RUN_TAG, "none") not in ("", "none", "unknown")
        ]
        token = page.token
        if not token:
            return runs
