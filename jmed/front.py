"""The HTTP front `jmed serve` runs: MLflow's own scoring app, the one `mlflow models serve` runs
(`mlflow.pyfunc.scoring_server.init`, same routes, request forms and answers), behind one ASGI layer
that answers the requests MLflow 3.17's code mishandles before the served model sees them:

- POST /invocations without Content-Type: MLflow calls `None.split` and answers 500; here 415.
- A JSON body nested too deeply: MLflow's `json.loads` raises RecursionError and it answers 500; here
  400. jmed's requests are 4 levels deep ({"dataframe_records": [{"choices": [...]}]}), so bodies
  deeper than MAX_DEPTH are refused before MLflow parses them, at a depth it always parses.
- A string with a lone surrogate (JSON's "\\ud800") or a NUL: MLflow's parsing fails on it without
  naming where; here 400 naming the field (`dataframe_records[0].question: …`).
- `params` MLflow would drop with a warning (names not in the model's params schema, by MLflow's
  design): here 400 naming them, so a typo such as `max_tokens` is not silently ignored.

Everything else passes through untouched. Run as `uvicorn jmed.front:app` with $JMED_MODEL_URI set
(jmed.server.serve_command builds the command); `mlflow models serve` itself still serves the same model,
without this layer (the README lists the difference).
"""

from __future__ import annotations

import asyncio
import json
import os

from jmed.data import bad_text  # bound now: `build` hands the name `jmed` over to the model's own copy

MAX_DEPTH = 64
MAX_BODY_BYTES = 16 * 1024 * 1024  # 413 above this, before the body is read whole (256 rows of questions fit)
# MLflow's request forms (and its chat and completion keys, which it answers itself)
REQUEST_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs", "params", "messages", "prompt")
INLINE_BYTES = 64 * 1024  # bodies up to this size are checked on the event loop (no thread hop)
JSON = "application/json"


def _depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion (a list or object adds one level)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def refusal(content_type: str | None, body: bytes, known_params: set[str] | None) -> tuple[int, str] | None:
    """(HTTP status, message) for a request MLflow's server would mishandle, else None (pass it on).
    `known_params`: the served model's params schema (None: it takes no params)."""
    if not content_type or not content_type.strip():
        return 415, f"Content-Type is required: {JSON} (or text/csv, application/x-parquet)"
    if content_type.split(";")[0].strip().lower() != JSON:
        return None  # CSV and Parquet carry no params, and MLflow answers their errors itself
    try:
        decoded = json.loads(body)
    except RecursionError:
        return 400, f"invalid JSON: nested too deeply (a request is at most {MAX_DEPTH} levels of [ or {{)"
    except ValueError:  # invalid JSON or UTF-8: MLflow answers 400 and names the position
        return None
    depth = _depth(decoded)
    if depth > MAX_DEPTH:
        return 400, f"invalid JSON: nested {depth} levels deep; a request is at most {MAX_DEPTH}"
    found = bad_text(decoded)
    if found:  # MLflow's own parsing fails on these without naming where (or, in choices, the model)
        return 400, f"{found[0] or 'body'}: {found[1]}"
    if isinstance(decoded, dict):
        unknown_keys = sorted(map(str, set(decoded) - set(REQUEST_KEYS)))
        if unknown_keys:  # MLflow ignores them: a "param" typo would change nothing, silently
            return 400, f"unknown field(s) in the request: {', '.join(unknown_keys)}; known: {', '.join(REQUEST_KEYS)}"
        split = decoded.get("dataframe_split")
        if isinstance(split, dict) and isinstance(split.get("index"), list) and isinstance(split.get("data"), list):
            if len(split["index"]) != len(split["data"]):  # MLflow answers one prediction per index entry
                return 400, (
                    f"dataframe_split: {len(split['index'])} index entries for {len(split['data'])} rows of data"
                )
    params = decoded.get("params") if isinstance(decoded, dict) else None
    if isinstance(params, dict):
        unknown = sorted(map(str, set(params) - (known_params or set())))
        if unknown:
            known = ", ".join(sorted(known_params)) if known_params else "none"
            return 400, f"unknown param(s): {', '.join(unknown)}; known: {known}"
    return None


def guarded(inner, known_params: set[str] | None, on_shutdown=None):
    """ASGI app: POST /invocations checked by `refusal`, then replayed to `inner` unchanged.
    `on_shutdown` runs when the server shuts down (after uvicorn's graceful period), before `inner` hears it."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan" and on_shutdown is not None:

            async def receive_lifespan():
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    on_shutdown()
                return message

            return await inner(scope, receive_lifespan, send)
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != "/invocations":
            return await inner(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return await _answer(send, 413, f"request body of {int(declared)} bytes; at most {MAX_BODY_BYTES}")
        chunks, more, size = [], True, 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:  # chunked, with no length declared
                return await _answer(send, 413, f"request body over {MAX_BODY_BYTES} bytes")
            more = message.get("more_body", False)
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        # a question's body is checked in about 20 µs, here; a large one in a thread, as MLflow parses it,
        # so that it does not hold up the requests being answered
        refused = (
            refusal(content_type, body, known_params)
            if len(body) < INLINE_BYTES
            else await asyncio.to_thread(refusal, content_type, body, known_params)
        )
        if refused:
            return await _answer(send, *refused)
        sent = False

        async def replay():
            nonlocal sent
            if sent:  # the body was read whole; afterwards only a disconnect can come
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await inner(scope, replay, _without_stack_traces(send))

    return app


async def _answer(send, status: int, text: str) -> None:
    code = "BAD_REQUEST" if status == 400 else "REQUEST_LIMIT_EXCEEDED" if status == 413 else "INVALID_PARAMETER_VALUE"
    payload = json.dumps({"error_code": code, "message": text}, ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _without_stack_traces(send):
    """MLflow puts the server's Python stack trace into its 4xx answers: a client is told what was wrong
    with its request, never how the server is built. Other answers pass through unchanged."""
    held: dict = {}

    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held["start"], held["body"] = message, b""
            return
        if message["type"] == "http.response.body" and "start" in held:
            held["body"] += message.get("body", b"")
            if message.get("more_body", False):
                return
            body = held["body"]
            try:
                decoded = json.loads(body)
                if isinstance(decoded, dict) and decoded.pop("stack_trace", None) is not None:
                    body = json.dumps(decoded, ensure_ascii=False).encode()
            except ValueError:
                pass
            start = held.pop("start")
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        return await send(message)

    return wrapped


def build(model_uri: str):
    """MLflow's scoring app for `model_uri`, exactly as `mlflow models serve` builds it, behind the guard."""
    import sys

    from jmed.console import quiet, sifted

    quiet()  # the known third-party warnings out of the server log, unless JMED_VERBOSE (before mlflow loads)
    from mlflow.pyfunc import scoring_server

    # A registered version runs the jmed code it was logged with (its code_paths copy, put first on
    # sys.path by MLflow), as under `mlflow models serve`, where nothing has imported jmed yet. Here
    # this module's own import loaded the installed jmed, so it is forgotten before the model loads; the
    # functions above keep what they bound.
    this = sys.modules[__name__]
    for name in [m for m in sys.modules if m == "jmed" or m.startswith("jmed.")]:
        del sys.modules[name]
    with sifted():
        model = scoring_server.load_model_with_mlflow_config(model_uri)
    # uvicorn imports `jmed.front:app` twice (once to check it, once to serve): the second import must
    # find this module, whose `app` is built, not the model's code copy, which would load the model again
    sys.modules[__name__] = this
    schema = model.metadata.get_params_schema()
    known = {p.name for p in schema.params} if schema is not None else None
    # the served model's own `close` (JmedModel: fail the requests it still holds, so that the threads
    # waiting on them end and the process can exit); a model without one has nothing to release
    try:
        close = getattr(model.unwrap_python_model(), "close", None)
    except Exception:  # noqa: BLE001 - not a Python model
        close = None
    return guarded(scoring_server.init(model), known, close)


def __getattr__(name):
    # `uvicorn jmed.front:app` loads the model only when the server asks for the app, not on import
    if name == "app":
        globals()["app"] = value = build(os.environ["JMED_MODEL_URI"])
        return value
    raise AttributeError(name)
