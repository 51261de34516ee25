"""What jmed prints: one aligned summary when a step ends, a header per pipeline step, and third-party
noise kept out of the way unless asked for (`jmed --verbose …` or JMED_VERBOSE=1).

Summaries are built from the values a step logs, so the terminal and the MLflow run agree.
"""

from __future__ import annotations

import contextlib
import os
import sys

VERBOSE_ENV = "JMED_VERBOSE"

# Third-party warnings jmed's entry points silence, by exact message (a new warning still shows).
# pyproject's pytest filterwarnings lists the same messages for the test suite.
KNOWN_WARNINGS = (
    ("`is_gradient_checkpointing` is deprecated", FutureWarning),
    ("`torch.jit.script_method` is deprecated", DeprecationWarning),
    ("For backward compatibility, 'str' dtypes are included by select_dtypes", Warning),
    ("The ``noload`` loader strategy is deprecated", Warning),
    ("Operation with range is deprecated", Warning),
    # registered versions from before jmed 0.3 have no type hint on `predict` (jmed.serving's comment)
    (".*Add type hints to the `predict` method", UserWarning),
    ("The specified dataset source can be interpreted in multiple ways", UserWarning),
    ("urllib3 .* or chardet .* doesn't match a supported version", Warning),
)

# Third-party loggers whose warnings are not the user's concern, kept to errors unless verbose:
# bitsandbytes says "Failed to load CPU gemm_4bit_forward from kernels-community" at import (an optional
# faster 4-bit kernel from the hub; it falls back to its own), in every step that imports peft.
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)

# MLflow's own INFO lines ("Creating initial MLflow database tables", "Started monitoring system
# metrics", "Created version …") and artifact-download progress bars; the user's setting wins.
QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def quiet(loud: bool = False) -> None:
    """Silence known third-party noise for this process and the processes it starts (before mlflow is
    imported: MLflow reads its log level once). `loud`: show everything (also sets JMED_VERBOSE)."""
    import warnings

    if loud or verbose():
        os.environ[VERBOSE_ENV] = "1"
        return
    quiet_loggers()
    for key, value in QUIET_ENV.items():
        if not os.environ.get(key):  # the user's own setting wins
            os.environ[key] = value
    # processes jmed starts (`mlflow run`, `mlflow models serve`) import requests before any jmed code
    child = "ignore:urllib3 (:Warning"
    if child not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS", ""), child]))
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_loggers() -> None:
    """QUIET_LOGGERS to errors only, unless verbose (also called where a served model is imported)."""
    import logging

    if not verbose():
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def sifted():
    """Warnings raised inside are shown unless they are KNOWN_WARNINGS (or verbose). For code that
    installs filters of its own: MLflow checks a served model's `predict` under
    `simplefilter("once")`, which outranks any ignore filter; a recorded warning is sifted here instead."""
    import re
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        known = any(issubclass(w.category, cat) and re.match(msg, str(w.message), re.I) for msg, cat in KNOWN_WARNINGS)
        if verbose() or not known:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def progress_disabled() -> bool | None:
    """tqdm's `disable`: bars on a terminal; none in logs and pipes unless verbose (None = tqdm decides)."""
    return None if verbose() or sys.stderr.isatty() else True


def block(title: str, rows) -> str:
    """A titled block of aligned `name  value` lines; rows with value None are left out."""
    rows = [(str(k), str(v)) for k, v in rows if v is not None]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join([f"[jmed] {title}"] + [f"  {k.ljust(width)}  {v}" for k, v in rows])


def say(text: str) -> None:
    print(text, flush=True)


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def signed_pct(value) -> str | None:
    return None if value is None else f"{100 * float(value):+.1f} pt"


def table(header: list[str], rows: list[list]) -> str:
    """A plain aligned text table (the pipeline's final comparison)."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)
