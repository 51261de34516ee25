"""`make demo`: the whole system once, on the built-in tiny model and the bundled sample.

`mlflow run . -e main` (validate → train → evaluate → promote), then `mlflow models serve` for the
champion, one real HTTP question, and the server stopped again; then the same champion through the
vllm engine's OpenAI API (`jmed serve --engine vllm`), one request. Honours MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from jmed import tracking

ROOT = Path(__file__).resolve().parent.parent


def venv_env() -> dict:
    """The environment with this interpreter's bin folder first: `mlflow run` calls `jmed`, and
    `mlflow models serve` calls `uvicorn`, by name."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }


def ask(url: str, question: str, choices: list[str]) -> dict:
    body = json.dumps({"dataframe_records": [{"question": question, "choices": choices}]}).encode()
    req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["predictions"][0]


def vllm_answer(model_uri: str, question, env: dict) -> None:
    """The same champion through the vllm engine's OpenAI API (`jmed serve --engine vllm`), one request."""
    from jmed import server
    from jmed.engine import EngineError, vllm_python
    from jmed.models import load_tokenizer
    from jmed.prompts import render

    try:
        vllm_python()
    except EngineError as exc:
        print(f"(vllm engine skipped: {exc})")
        return
    port = server.free_port()
    log_path = Path("demo-serve.log").resolve()
    cmd = [sys.executable, "-m", "jmed", "serve", "--engine", "vllm", "--model-uri", model_uri, "--port", str(port)]
    print(
        f"$ jmed serve --engine vllm --model-uri {model_uri} --port {port}   (vLLM, OpenAI API; log: {log_path})",
        flush=True,
    )
    proc, seconds = server.start_process(cmd, env, port, "/health", log_path, 900, "jmed serve --engine vllm")
    try:
        prompt = render(question, "igakuqa", (), load_tokenizer("tiny")[0]).prompt
        body = json.dumps(
            {"model": model_uri.removeprefix("models:/"), "prompt": prompt, "max_tokens": 16, "temperature": 0}
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            text = json.loads(r.read())["choices"][0]["text"]
    finally:
        server.stop_server(proc, grace=30)
    print(f"ready in {seconds:.0f} s; POST /v1/completions model={model_uri.removeprefix('models:/')}: {text!r}")
    print("The vLLM server has been stopped.\n")


def main() -> int:
    from jmed.cli import handle_signals
    from jmed.console import quiet

    quiet()  # this process and `mlflow run` / `mlflow models serve` below: no third-party noise (JMED_VERBOSE=1 shows it)
    handle_signals()  # SIGTERM or SIGHUP unwind like Ctrl-C: the server started below is stopped, never orphaned
    from jmed import data, registry, server

    started = time.monotonic()
    uri = tracking.shown_uri()
    env = venv_env()
    print(
        "jmed demo: the built-in tiny model (2 layers, hidden 64) shows the machinery end to end.\n"
        "It has no medical skill: its answers are not medical advice.\n"
        f"Tracking store: {uri}\n",
        flush=True,
    )
    cmd = [str(Path(sys.executable).with_name("mlflow")), "run", str(ROOT), "-e", "main", "--env-manager", "local"]
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, env=env).returncode != 0:
        print("the main pipeline failed; see the output above", file=sys.stderr)
        return 1

    model_uri = registry.champion_uri("tiny")
    question = next(
        q
        for q in data.load_questions(str(data.SAMPLE_TEST))
        if q.text_only and len(q.choices) == 5 and q.n_answers == 1
    )
    log_path = Path("demo-serve.log").resolve()
    port = server.free_port()
    print(f"\n$ mlflow models serve -m {model_uri} --env-manager local -p {port}   (log: {log_path})", flush=True)
    proc, seconds = server.start_server(model_uri, port, log_path=log_path)
    try:
        print(f"ready in {seconds:.1f} s", flush=True)
        answer = ask(f"http://127.0.0.1:{port}", question.stem, list(question.choices))
    finally:
        server.stop_server(proc)
    print(f"\nQuestion ({question.id}): {question.stem}")
    for letter, choice in zip("abcde", question.choices):
        print(f"  {letter}. {choice}")
    print(
        f"Served answer: {answer.get('prediction')} ({answer.get('answer_text')})   gold: {','.join(question.answer[0])}"
    )
    print("The server has been stopped.\n")
    vllm_answer(model_uri, question, env)
    print("Open the MLflow UI on the same store:")
    if uri.startswith("sqlite:"):
        # the variable keeps `mlflow ui` from starting a job runner and its consumers
        print(
            f"  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000"
            "   # then http://127.0.0.1:5000"
        )
    else:
        print(f"  {uri}")
    print(
        f"Serve the champion yourself: .venv/bin/jmed serve --base-model tiny\n"
        f"demo finished in {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
