"""`jmed serve --engine vllm`: a base model and its registered adapters behind vLLM's OpenAI API.

One vLLM server holds the base; each registered version runs as a LoRA on it (runtime LoRA: many
adapters share the base's memory in one process). In front, on the public port, a small ASGI app
links vLLM's adapter names to the MLflow Model Registry, which no peer does:

- `model` in a request names a registered model the way a user knows it: `jmed-<slug>@champion`
  (any alias), `jmed-<slug>/3`, or `models:/jmed-<slug>/3`; the base model answers to its own name.
- An alias is looked up in the registry again once its answer is older than `poll_s`: when
  `jmed promote` moves `@champion`, the next requests get the new version, no restart.
- A version not loaded yet is resolved on first use: downloaded from MLflow, its adapter's sha256
  checked against the version's tag (`jmed.adapter_sha256`, written by `register`), checked to be
  trained on this base, then loaded into vLLM (`/v1/load_lora_adapter`).
- `/v1/models` lists what answers: the base, each alias asked for, each loaded version.
- Bad requests get a 4xx naming the problem (bad JSON 400, no or unknown model 404, a prompt longer
  than the model takes: vLLM's own 400), never a 5xx.

vLLM's LoRA resolver plugins (`vllm.lora.resolver`) were the other way to resolve names; they run inside
vLLM's environment (no mlflow there: it pins another transformers) and cache by name, so an alias
would never move. Resolving in front keeps the registry client in jmed's environment.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from pathlib import Path

log = logging.getLogger("jmed.llm_serve")


class Refused(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class Adapters:
    """Registered versions of one model, as LoRA names on the upstream vLLM server."""

    def __init__(self, name: str, base_model: str, base_revision: str, upstream: str, poll_s: float):
        self.name, self.base_model, self.base_revision = name, base_model, base_revision
        self.upstream, self.poll_s = upstream.rstrip("/"), poll_s
        self.loaded: dict[str, str] = {}  # version -> lora name upstream
        self.aliases: dict[str, tuple[str, float]] = {}  # alias -> (version, when looked up)
        self.lock = threading.Lock()

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient()

    def lora_name(self, version: str) -> str:
        return f"{self.name}/{version}"

    def resolve(self, requested: str) -> str:
        """The upstream model name for a request's `model`, loading the version on first use."""
        ref = requested.removeprefix("models:/")
        if ref == self.base_model:
            return self.base_model
        if ref.startswith(f"{self.name}@"):
            return self.lora_name(self.ensure(self.alias(ref.split("@", 1)[1])))
        if ref.startswith(f"{self.name}/"):
            return self.lora_name(self.ensure(ref.split("/", 1)[1]))
        raise Refused(
            404,
            f"model {requested!r} is not served here: ask for {self.base_model!r}, "
            f"{self.name}@<alias> (e.g. {self.name}@champion) or {self.name}/<version>",
            "NotFoundError",
        )

    def alias(self, alias: str) -> str:
        known = self.aliases.get(alias)
        if known and time.monotonic() - known[1] < self.poll_s:
            return known[0]
        try:
            version = str(self._client().get_model_version_by_alias(self.name, alias).version)
        except Exception as exc:  # noqa: BLE001 - the registry's own message names the problem
            if known:  # the registry is unreachable: keep serving what the alias was
                log.warning("cannot look up %s@%s (%s); still serving version %s", self.name, alias, exc, known[0])
                return known[0]
            raise Refused(404, f"{self.name}@{alias}: no such alias in the registry", "NotFoundError") from exc
        if known and known[0] != version:
            log.warning("alias %s@%s moved: version %s (was %s)", self.name, alias, version, known[0])
        self.aliases[alias] = (version, time.monotonic())
        return version

    def ensure(self, version: str) -> str:
        if version in self.loaded:
            return version
        if not version.isdigit():
            raise Refused(404, f"{self.name}/{version}: a version is a number", "NotFoundError")
        with self.lock:
            if version not in self.loaded:
                self._load(version)
        return version

    def _load(self, version: str) -> None:
        import requests

        from jmed import adapter
        from jmed.registry import ADAPTER_DIGEST_TAG

        client = self._client()
        try:
            mv = client.get_model_version(self.name, version)
        except Exception as exc:  # noqa: BLE001
            raise Refused(404, f"{self.name}/{version} is not registered", "NotFoundError") from exc
        adapter_dir = downloaded(self.name, version)
        meta = adapter.read(adapter_dir)
        if (
            meta.get("model") != self.base_model
            or (meta.get("base_revision") or self.base_revision) != self.base_revision
        ):
            raise Refused(
                400,
                f"{self.name}/{version} was trained on {meta.get('model')!r} revision "
                f"{meta.get('base_revision')}, not on this server's base {self.base_model!r}",
            )
        recorded = mv.tags.get(ADAPTER_DIGEST_TAG, "")
        try:
            adapter.check_digest(adapter_dir, recorded, f"{self.name}/{version}")
        except ValueError as exc:
            raise Refused(409, str(exc), "ConflictError") from None
        if not recorded:
            log.warning(
                "%s/%s has no %s tag (registered before jmed recorded it); loaded unchecked",
                self.name,
                version,
                ADAPTER_DIGEST_TAG,
            )
        r = requests.post(
            f"{self.upstream}/v1/load_lora_adapter",
            timeout=600,
            json={"lora_name": self.lora_name(version), "lora_path": str(adapter_dir)},
        )
        if r.status_code != 200:
            raise Refused(400, f"vLLM refused {self.name}/{version}: {r.text[:400]}")
        self.loaded[version] = self.lora_name(version)
        log.warning("loaded %s/%s (adapter %s…)", self.name, version, adapter.digest(adapter_dir)[:12])

    def listing(self) -> list[dict]:
        names = (
            [self.base_model]
            + [f"{self.name}@{a}" for a in sorted(self.aliases)]
            + [self.lora_name(v) for v in sorted(self.loaded, key=int)]
        )
        return [{"id": n, "object": "model", "owned_by": "jmed", "root": self.base_model} for n in names]


def build(adapters: Adapters):
    """The ASGI app in front of the upstream vLLM server."""
    import requests
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    upstream = adapters.upstream
    session = requests.Session()

    def error(status: int, message: str, kind: str = "BadRequestError"):
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    async def models(request):
        return JSONResponse({"object": "list", "data": adapters.listing()})

    async def health(request):
        r = await run_in_threadpool(session.get, f"{upstream}/health", timeout=10)
        return Response(status_code=200 if r.status_code == 200 else 503)

    async def forward(request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return error(400, f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        requested = body.get("model")
        if not isinstance(requested, str) or not requested:
            return error(
                404, f"name the model: 'model' is one of {[m['id'] for m in adapters.listing()]}", "NotFoundError"
            )
        try:
            body["model"] = await run_in_threadpool(adapters.resolve, requested)
        except Refused as r:
            return error(r.status, r.message, r.kind)
        url = f"{upstream}{request.url.path}"
        if body.get("stream"):
            r = await run_in_threadpool(session.post, url, json=body, stream=True, timeout=600)
            return StreamingResponse(
                r.iter_content(chunk_size=None),
                status_code=r.status_code,
                media_type=r.headers.get("content-type", "text/event-stream"),
            )
        r = await run_in_threadpool(session.post, url, json=body, timeout=600)
        try:
            out = r.json()
        except ValueError:
            return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))
        if isinstance(out, dict) and "model" in out:
            out["model"] = requested  # answered as asked; which version it was is in the server log
        status = r.status_code if r.status_code < 500 else 502  # an engine failure, not the client's
        return JSONResponse(out, status_code=status)

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/health", health),
            Route("/ping", health),
            Route("/v1/completions", forward, methods=["POST"]),
            Route("/v1/chat/completions", forward, methods=["POST"]),
        ]
    )


def serve(model_uri: str, host: str, port: int, poll_s: float, log_path=None) -> None:
    """Start vLLM on the base of `model_uri` (models:/jmed-<slug>@alias or /<version>), load that version,
    and serve the front on host:port until stopped; vLLM stops with it."""
    import uvicorn

    from jmed import engine as E
    from jmed import models, server
    from jmed.serving import parse_models_uri

    name, version, alias = parse_models_uri(model_uri)
    card = _card(name, version, alias)
    base_model = card.get("model") or ""
    _, info = models.load_tokenizer(base_model)
    # LoRA slots sized for the first version (at least r 16): a larger slot costs every request compute on
    # CPU; a later version of higher rank is refused by name (400) and needs a restart with it first
    rank = int((card.get("config") or {}).get("lora_r", 16) or 16)
    proc, url, seconds = E.start_vllm(
        info["path"], served_names=[base_model], lora_rank=max(16, rank), log_path=log_path
    )
    try:
        adapters = Adapters(name, base_model, info["revision"], url.removesuffix("/v1"), poll_s)
        first = adapters.alias(alias) if alias else version
        adapters.ensure(first)
        log.warning(
            "vLLM ready in %.0f s; serving %s on http://%s:%d/v1 (%s)",
            seconds,
            base_model,
            host,
            port,
            ", ".join(m["id"] for m in adapters.listing()),
        )
        uvicorn.run(build(adapters), host=host, port=port, log_level="warning")
    finally:
        server.stop_server(proc)


@functools.lru_cache(maxsize=None)
def downloaded(name: str, version: str) -> Path:
    """A registered version's adapter folder, downloaded once per server process."""
    import tempfile

    import mlflow

    from jmed import adapter

    folder = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{name}/{version}", dst_path=tempfile.mkdtemp(prefix="jmed-vllm-serve-")
        )
    )
    return adapter.inside(folder, "artifacts/adapter", f"{name}/{version}")


def _card(name: str, version: str, alias: str) -> dict:
    """The adapter card (jmed.json) of the version served first: which base to start."""
    from mlflow import MlflowClient

    from jmed import adapter

    client = MlflowClient()
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    return adapter.read(downloaded(name, str(mv.version)))
