"""Exclusive promotion of one registered model: an OS file lock beside a local store, a lease tag on a remote
one; registry calls retried on conflicts."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def _local_store_file(uri: str) -> Path | None:
    """The file or folder of a local tracking store (where the OS lock lives); None for remote stores."""
    from urllib.parse import urlparse

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path or uri)
    return None


LEASE_TAG = "jmed.promote.lease"  # "<token> <expiry epoch> <host> <pid>" on the registered model


def _retrying(fn, *args, attempts: int = 8):
    """A registry call retried on conflicts: concurrent writers on a remote store get transient
    errors (`UNIQUE constraint failed: registered_model_tags`, HTTP 409/5xx) that succeed on retry."""
    import random

    from mlflow.exceptions import MlflowException

    for i in range(attempts):
        try:
            return fn(*args)
        except MlflowException as exc:
            if i == attempts - 1 or exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            time.sleep(min(2.0, 0.05 * 2**i) * (0.5 + random.random()))


def _holder_gone(held: str) -> bool:
    """A lease written by a process of this host that no longer exists can be broken at once."""
    import socket

    parts = held.split()
    if len(parts) != 4 or parts[2] != socket.gethostname() or not parts[3].isdigit():
        return False
    from jmed.tracking import alive

    return not alive(int(parts[3]))


@contextlib.contextmanager
def promote_lock(client, name: str, timeout: float = 600.0):
    """Exclusive promotion of one registered model: an fcntl lock beside a local store, else a lease tag
    (token, expiry, host and pid) that expires after `timeout` or is broken at once when its holder
    process is gone; every registry call retries on conflicts."""
    import socket
    import uuid

    from mlflow.exceptions import MlflowException

    from jmed.tracking import tracking_uri

    store = _local_store_file(tracking_uri())
    if store is not None:
        import fcntl

        lock = store.parent / f".{store.name}.{name}.promote.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released by the OS when the holder dies
            try:
                yield f"file lock {lock}"
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    with contextlib.suppress(MlflowException):
        client.create_registered_model(name)
    token, deadline = uuid.uuid4().hex, time.time() + timeout
    me = f"{socket.gethostname()} {os.getpid()}"

    def held_now() -> str:
        return _retrying(client.get_registered_model, name).tags.get(LEASE_TAG, "")

    while True:
        held = held_now()
        owner, _, rest = held.partition(" ")
        until = rest.split(" ")[0] if rest else "0"
        expired = not until.replace(".", "", 1).isdigit() or float(until) < time.time()
        if not held or owner == token or expired or _holder_gone(held):
            _retrying(client.set_registered_model_tag, name, LEASE_TAG, f"{token} {time.time() + timeout:.0f} {me}")
            time.sleep(0.5)
            if held_now().startswith(token):
                break
        if time.time() > deadline:
            raise TimeoutError(
                f"promotion lease on {name} held by {held} (token, expiry, host, pid); it expires "
                f"at {until} or is broken as soon as that process is gone"
            )
        time.sleep(1.0)
    try:
        yield f"lease tag {LEASE_TAG} on {name}"
    finally:
        if held_now().startswith(token):
            _retrying(client.delete_registered_model_tag, name, LEASE_TAG)
