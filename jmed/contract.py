"""The serving contract, with no side effects on import: what a served jmed model accepts (input rows
and params, checked before the model runs) and its limits. `jmed.serving` (the pyfunc model), the
registry (signature) and `jmed predict` all use these checks, so a bad request gets the same message
everywhere: MlflowException(INVALID_PARAMETER_VALUE), which `mlflow models serve` answers with HTTP 400.
"""

from __future__ import annotations

import math

from jmed.config import MAX_NEW_TOKENS, PROTOCOLS, EvalConfig
from jmed.records import MAX_CHOICES  # the one alphabet: what prompts can label
from jmed.records import MAX_TEXT_CHARS as MAX_CHARS  # one limit: validation refuses the same

MAX_ROWS = 256
# 0: fit each question's answers, as evaluation does (inference.answer_budget); the default is EvalConfig's
DEFAULT_MAX_NEW_TOKENS = EvalConfig.max_new_tokens
MAX_NEW_TOKENS_LIMIT = MAX_NEW_TOKENS  # one limit: evaluate's is the same (jmed.config)
# What a served model answers per row: the names `jmed predict` writes and `jmed score` reads
# (IgakuQA's own: `prediction` the parsed letters "d,e", `response` the raw text), the chosen choices'
# text, the version that answered, the number of letters asked for and whether the answer has another.
OUTPUT_FIELDS = ("prediction", "answer_text", "response", "model_version", "n_answers", "count_mismatch")
# jmed 0.2's served names, still answered beside the new ones for one release (removed in jmed 0.4)
OLD_FIELD_ALIASES = {"answer": "prediction", "raw_output": "response"}
DEFAULT_POLL_S = 10.0  # served from models:/…@alias: how often the alias is checked (0: never)


def invalid(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def check_inputs(model_input) -> list[dict]:
    """Rows as {"question", "choices", "n_answers"}; every problem found is reported at once."""
    import numpy as np
    import pandas as pd

    from jmed.data import bad_text
    from jmed.metrics import n_select

    if isinstance(model_input, dict):
        columns = [v for v in model_input.values() if isinstance(v, (list, tuple, np.ndarray))]
        if (
            model_input
            and len(columns) == len(model_input)
            and len({len(v) for v in columns}) == 1
            and "question" in model_input
            and not isinstance(model_input["question"], str)
        ):
            # columnar: {"question": [...], "choices": [[...], ...]} (`inputs` or `instances` by column)
            model_input = pd.DataFrame({k: list(v) for k, v in model_input.items()})
        else:
            model_input = [model_input]
    if isinstance(model_input, list):
        if not all(isinstance(r, dict) for r in model_input):
            raise invalid("input must be a list of records {question, choices[, n_answers]}")
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        raise invalid(f"input must be a table of questions, got {type(model_input).__name__}")
    missing = [c for c in ("question", "choices") if c not in model_input.columns]
    if missing:
        raise invalid(f"missing input field(s): {', '.join(missing)}")
    if len(model_input) == 0:
        raise invalid("no questions in the input")
    if len(model_input) > MAX_ROWS:
        raise invalid(f"{len(model_input)} questions in one request; at most {MAX_ROWS}")
    unknown = sorted(set(model_input.columns) - {"question", "choices", "n_answers"})
    errors = [f"unknown input field(s): {', '.join(map(str, unknown))}"] if unknown else []
    rows = []
    for i, rec in enumerate(model_input.to_dict("records")):
        where = f"record {i}"
        # MLflow's request forms hand values over as numpy arrays and scalars; plain Python from here on
        q, ch, n = (_plain(rec.get(k)) for k in ("question", "choices", "n_answers"))
        if _missing(q):
            errors.append(f"{where}: 'question' is missing")
        elif not isinstance(q, str):
            errors.append(f"{where}: 'question' must be a string, got {type(q).__name__}")
        elif not q.strip():
            errors.append(f"{where}: 'question' is empty")
        elif len(q) > MAX_CHARS:
            errors.append(f"{where}: 'question' has {len(q)} characters; at most {MAX_CHARS}")
        elif bad := bad_text(q):
            errors.append(f"{where}: 'question' {bad[1]}")
        if _missing(ch):
            errors.append(f"{where}: 'choices' is missing")
            ch = None
        elif not isinstance(ch, (list, tuple)):
            errors.append(f"{where}: 'choices' must be a list of strings, got {type(ch).__name__}")
            ch = None
        elif not ch:
            errors.append(f"{where}: 'choices' is empty")
            ch = None
        elif len(ch) == 1 and isinstance(ch[0], str) and ch[0].strip():  # as `jmed validate` says: a single
            # choice is not a multiple-choice question (a bad one is named as such below)
            errors.append(f"{where}: 'choices' has 1 entry; a question has at least 2")
            ch = None
        elif len(ch) > MAX_CHOICES:
            errors.append(f"{where}: 'choices' has {len(ch)} entries; at most {MAX_CHOICES}")
            ch = None
        else:
            for j, c in enumerate(ch):
                if not isinstance(c, str):
                    errors.append(f"{where}: choices[{j}] must be a string, got {type(c).__name__}")
                    ch = None
                elif not c.strip():
                    errors.append(f"{where}: choices[{j}] is empty")
                elif len(c) > MAX_CHARS:
                    errors.append(f"{where}: choices[{j}] has {len(c)} characters; at most {MAX_CHARS}")
                elif bad := bad_text(c):
                    errors.append(f"{where}: choices[{j}] {bad[1]}")
        if _missing(n):
            n = n_select(q) if isinstance(q, str) else 1
        elif (
            isinstance(n, bool)
            or not isinstance(n, (int, np.integer, float))
            or (isinstance(n, float) and not n.is_integer())
        ):  # 1.5, inf
            errors.append(f"{where}: 'n_answers' must be an integer, got {n!r}")
            n = None
        else:
            n = int(n)
        if ch is not None and n is not None and not 1 <= n <= len(ch):
            errors.append(f"{where}: 'n_answers' is {n}; must be between 1 and the {len(ch)} choices")
        rows.append({"question": q, "choices": list(ch or []), "n_answers": n})
    if errors:
        raise invalid(
            "invalid input: "
            + "; ".join(errors[:20])
            + (f"; … and {len(errors) - 20} more" if len(errors) > 20 else "")
        )
    return rows


PARAMS = ("protocol", "max_new_tokens", "version", "alias")


def check_params(params: dict | None, default_protocol: str, prompt_format: str = "") -> tuple[str, int]:
    """(protocol, max_new_tokens) of a request. `version` and `alias` (which registered version answers)
    are checked by the served model, which knows the versions (`selected_version`)."""
    params = params or {}
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise invalid(f"unknown param(s): {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    protocol = params.get("protocol") or default_protocol
    if protocol not in PROTOCOLS:
        raise invalid(f"param 'protocol' is {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if prompt_format:
        from jmed.prompts import check_protocol

        try:
            check_protocol(prompt_format, protocol)
        except ValueError as exc:
            raise invalid(f"param 'protocol': {exc}") from None
    tokens = params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= MAX_NEW_TOKENS_LIMIT:
        raise invalid(
            f"param 'max_new_tokens' is {tokens!r}; must be an integer from 0 (fit the answers) "
            f"to {MAX_NEW_TOKENS_LIMIT}"
        )
    return protocol, tokens


def selected_version(params: dict | None) -> tuple[str, str]:
    """(version, alias) asked for by a request; ("", "") means the server's default."""
    params = params or {}
    version, alias = params.get("version") or "", params.get("alias") or ""
    for name, value in (("version", version), ("alias", alias)):
        if not isinstance(value, str) or len(value) > 64:
            raise invalid(f"param {name!r} is {value!r}; must be a string (a registered version or alias)")
    if version and alias:
        raise invalid("give param 'version' or 'alias', not both")
    if version and not version.isdigit():
        raise invalid(f"param 'version' is {version!r}; must be a registered version number")
    return version, alias
