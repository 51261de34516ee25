"""The served model: an MLflow pyfunc logged as code (`python_model=<this file>`), nothing pickled.

Artifacts: `adapter` (adapter_model.safetensors, adapter_config.json, jmed.json with the prompt format,
protocol and training config) and, for small or local bases, `base` (the base model's folder). A hub
base is not copied: `model_config` names it by id and pinned revision, and loading checks the revision.

Input (one row per question): `question` (string), `choices` (list of strings), optional `n_answers`
(int; default: 「Nつ選べ」 in the stem, else 1). Params: `protocol` (letter | text | loglik; default the
adapter's), `max_new_tokens`, and `version` or `alias` (which registered version answers; default the
served one). Output (jmed.contract.OUTPUT_FIELDS, the names `jmed predict` writes and `jmed score`
reads): `prediction` (letters, "d,e"), `answer_text` (the chosen choices, one per line), `response`
(the generated text; for loglik the per-choice log-likelihoods as JSON), `model_version` (the
registered version that answered; "" when served from a run or a folder), `n_answers` (the letters
asked for) and `count_mismatch` (the answer has another number of letters). `answer` and
`raw_output`, jmed 0.2's names for `prediction` and `response`, are answered too until jmed 0.4.
Every input is checked before the model runs; a bad one raises MlflowException(INVALID_PARAMETER_VALUE),
which `mlflow models serve` answers with HTTP 400 and the message.

Serving for real traffic:
- Concurrent requests are batched (jmed.batcher): MLflow runs each request's `predict` in a thread, and
  the threads' rows are answered by one engine call per version and generation settings.
- Several registered versions of the same `jmed-<slug>` model share one base (peft multi-adapter):
  a request's `version` or `alias` loads that version's adapter beside the others (memory grows by
  the adapter, not the base). Versions trained on another base revision are refused.
- Served from `models:/<name>@<alias>`, a thread polls the registry every JMED_SERVE_POLL_S seconds
  (default contract.DEFAULT_POLL_S; 0 = never) and, when the alias moves, loads the new version beside the old one and then
  switches the default in one assignment. Requests already submitted finish on the version they were
  given; a version that fails to load is logged and the old one keeps serving.
  The served URI comes from $JMED_MODEL_URI (`jmed serve` sets it) or from the `mlflow models serve -m`
  command line this process descends from.
- JMED_SERVE_PRECISION (`jmed serve --precision`) loads the base in another precision than the version's.
- JMED_SERVE_MAX_ROWS and JMED_SERVE_WAIT_MS size the batches (jmed.batcher's defaults); an engine
  batch holds at most JMED_SERVE_BATCH_TOKENS padded prompt tokens (jmed.config.MAX_BATCH_TOKENS), so
  one long prompt runs with few others and memory stays bounded; a prompt over the model's limit
  (jmed.inference.prompt_token_limit) is refused with the request's 400.
- Registered versions are checked against the adapter digest recorded at registration; a version that
  fails to load is remembered, and refused without a new download, until the registry's record changes.

Imports only jmed.config (limits), jmed.contract (the input checks), jmed.adapter, jmed.batcher, jmed.prompts, jmed.models,
jmed.inference (the batched engines evaluation uses too) and jmed.metrics (answer parsing); never train
or evaluate. Importing this file registers the model with MLflow (models-from-code): nothing else
imports it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from jmed import adapter, console
from jmed.config import MAX_BATCH_TOKENS
from jmed.contract import (
    DEFAULT_POLL_S,
    MAX_NEW_TOKENS_LIMIT,
    OLD_FIELD_ALIASES,
    OUTPUT_FIELDS,
    check_inputs,
    check_params,
    invalid,
    selected_version,
)
from jmed.prompts import LETTERS, base_format

console.quiet_loggers()  # `mlflow models serve` runs no jmed entry point: its process is made quiet here

OUTPUT_COLUMNS = [*OUTPUT_FIELDS, *OLD_FIELD_ALIASES]
log = logging.getLogger("jmed.serving")


def served_uri() -> str:
    """The model URI this server serves: $JMED_MODEL_URI, else the `-m`/`--model-uri` of the
    `mlflow models serve` command this process descends from (read from /proc; "" elsewhere)."""
    uri = os.environ.get("JMED_MODEL_URI", "")
    pid = os.getpid()
    for _ in range(8):
        if uri or pid <= 1:
            return uri
        try:
            args = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return ""
        if "models" in args and "serve" in args:
            for i, a in enumerate(args):
                if a in ("-m", "--model-uri") and i + 1 < len(args):
                    uri = args[i + 1]
                elif a.startswith("--model-uri="):
                    uri = a.split("=", 1)[1]
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent
    return uri


def parse_models_uri(uri: str) -> tuple[str, str, str]:
    """models:/<name>/<version> or models:/<name>@<alias> -> (name, version, alias); else ("", "", "")."""
    m = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))/?", uri or "")
    return (m.group(1), m.group(2) or "", m.group(3) or "") if m else ("", "", "")


@dataclass
class Served:
    """One adapter held by the server: its peft adapter name, card, prompt format and protocol."""

    adapter_name: str
    meta: dict
    format: str
    protocol: str


class JmedModel(PythonModel):
    """A base model plus LoRA adapters (one per registered version) answering exam questions."""

    def load_context(self, context):
        from jmed.batcher import DEFAULT_MAX_ROWS, DEFAULT_WAIT_S, Batcher
        from jmed.inference import prompt_token_limit
        from jmed.models import load_adapter, load_base

        adapter_dir = Path(context.artifacts["adapter"])
        meta = adapter.read(adapter_dir)
        config = dict(context.model_config or {})
        base = context.artifacts.get("base") or config.get("base_model") or meta["model"]
        self.vllm = None  # jmed.engine.Opened when JMED_ENGINE=vllm (`jmed predict --engine vllm`)
        if os.environ.get("JMED_ENGINE", "hf") == "vllm":
            from jmed import engine as E
            from jmed.models import load_tokenizer

            tokenizer, info = load_tokenizer(base)
            model = None
        else:
            # `jmed serve --precision` (JMED_SERVE_PRECISION) over the version's own precision
            precision = os.environ.get("JMED_SERVE_PRECISION") or config.get("precision", "auto")
            model, tokenizer, info = load_base(
                base, quantization=config.get("quantization", "none"), precision=precision
            )
        want = config.get("base_revision") or meta.get("base_revision")
        if want and info.get("revision") and info["revision"] != want:
            raise invalid(
                f"base model {base!r} has revision {info['revision']}, but the adapter was trained "
                f"on revision {want}; fetch that revision"
            )
        self.base_model, self.base_revision = meta.get("model"), want or info.get("revision")
        if model is None:  # the adapter merged into a copy of the base, run by vLLM (one version)
            self.vllm = E.open_vllm(E.merged_dir(info["path"], info["revision"], adapter_dir), tokenizer)
        self.model = load_adapter(model, adapter_dir) if model is not None else None
        # While it holds one adapter, the served model has it merged into the base (no LoRA detour per
        # layer: as fast as a merged export). A second version unmerges it: then set_adapter picks the
        # adapter per batch. Quantised bases are never merged.
        self.merged = config.get("quantization", "none") in ("", "none") and self.model is not None
        if self.merged:
            self.model.merge_adapter()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.max_prompt_tokens = prompt_token_limit(model, tokenizer)
        self.batch_tokens = int(os.environ.get("JMED_SERVE_BATCH_TOKENS", MAX_BATCH_TOKENS))
        self.lock = threading.RLock()  # the model: one engine call or adapter load at a time
        # Other versions are downloaded here, into one folder removed when the server exits; a version
        # that failed to load is remembered with the registry's state of it, and refused without a new
        # download until that changes: {version: (state, message)}
        self.downloads = tempfile.mkdtemp(prefix="jmed-serve-")
        atexit.register(shutil.rmtree, self.downloads, ignore_errors=True)
        self.broken: dict[str, tuple] = {}
        self.name, version, alias = parse_models_uri(served_uri())
        if alias:
            version = self._alias_version(alias) or ""
        if self.name and version:  # a registered version: its adapter as it was registered, or nothing
            self._check_digest(self._client().get_model_version(self.name, version), adapter_dir)
        self.adapters = {version: self._served("default", meta)}
        self.default = version  # replaced in one assignment when the followed alias moves
        self.batcher = Batcher(
            self._run_batch,
            int(os.environ.get("JMED_SERVE_MAX_ROWS", DEFAULT_MAX_ROWS)),
            float(os.environ.get("JMED_SERVE_WAIT_MS", DEFAULT_WAIT_S * 1000)) / 1000,
        )
        poll = float(os.environ.get("JMED_SERVE_POLL_S", DEFAULT_POLL_S))
        if alias and poll > 0:
            threading.Thread(target=self._follow, args=(alias, poll), name="jmed-follow", daemon=True).start()

    @staticmethod
    def _served(adapter_name: str, meta: dict) -> Served:
        return Served(adapter_name, meta, adapter.prompt_format(meta), adapter.protocol(meta))

    def close(self) -> None:
        """The server is shutting down: requests still waiting are failed, so their threads end, and the
        downloaded versions are removed (atexit is the fallback under `mlflow models serve`)."""
        self.batcher.close()
        shutil.rmtree(self.downloads, ignore_errors=True)

    def _check_digest(self, mv, adapter_dir: Path) -> None:
        """The adapter files against the digest recorded when the version was registered."""
        recorded = mv.tags.get(adapter.DIGEST_TAG, "")
        if not recorded:
            log.warning(
                "%s/%s has no %s tag; its adapter is loaded unchecked", self.name, mv.version, adapter.DIGEST_TAG
            )
            return
        try:
            adapter.check_digest(adapter_dir, recorded, f"version {mv.version} of {self.name}")
        except ValueError as exc:
            raise invalid(str(exc)) from None

    # ---- registered versions --------------------------------------------------------------------

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient()

    def _alias_version(self, alias: str) -> str | None:
        try:
            return str(self._client().get_model_version_by_alias(self.name, alias).version)
        except Exception as exc:  # noqa: BLE001 - the registry may be unreachable; serving goes on
            log.warning("cannot resolve %s@%s: %s", self.name, alias, exc)
            return None

    def _follow(self, alias: str, poll: float) -> None:
        """Poll the alias; when it moves, load the new version beside the old one, then switch."""
        while True:
            time.sleep(poll)
            version = self._alias_version(alias)
            if version is None or version == self.default:
                continue
            known = self.broken.get(version)
            try:
                self._ensure(version)
            except Exception as exc:  # noqa: BLE001 - a broken version must not stop serving
                if self.broken.get(version) != known or known is None:  # said once, not at every poll
                    log.error(
                        "alias %s@%s moved to version %s, which failed to load (%s); still serving version %s",
                        self.name,
                        alias,
                        version,
                        exc,
                        self.default,
                    )
                continue
            log.info("alias %s@%s moved: serving version %s (was %s)", self.name, alias, version, self.default)
            self.default = version

    def _ensure(self, version: str) -> str:
        """Load a registered version's adapter beside the others (once); refuse another base."""
        if version in self.adapters:
            return version
        if self.vllm is not None:
            raise invalid(
                f"version {version} asked for, but this model runs its own version on the vllm engine "
                "(one merged adapter); serve several versions with `jmed serve --engine vllm`"
            )
        if not self.name:
            raise invalid(
                f"version {version} asked for, but this server was not started from a models:/ URI; "
                f"it serves only its own adapter"
            )
        client = self._client()
        try:
            mv = client.get_model_version(self.name, version)
        except Exception:  # noqa: BLE001 - not registered (or the registry is unreachable: said below)
            registered = sorted(
                (str(v.version) for v in client.search_model_versions(f"name = '{self.name}'")), key=int
            )
            raise invalid(
                f"version {version} of {self.name} is not registered; available: {', '.join(registered)}"
            ) from None
        state = (mv.last_updated_timestamp, mv.source, mv.run_id, tuple(sorted(mv.tags.items())))
        if version in self.broken and self.broken[version][0] == state:
            raise invalid(self.broken[version][1])  # as it was: not fetched again
        try:
            adapter_dir, meta = self._fetch(mv)
            with self.lock:
                if version not in self.adapters:
                    if self.merged:
                        self.model.unmerge_adapter()
                        self.merged = False
                    self.model.load_adapter(str(adapter_dir), adapter_name=f"v{version}", is_trainable=False)
                    self.adapters[version] = self._served(f"v{version}", meta)
        except Exception as exc:  # noqa: BLE001 - remembered until the registry's record of it changes
            message = getattr(exc, "message", "") or f"version {version} of {self.name} cannot be loaded: {exc}"
            self.broken[version] = (state, message)
            raise invalid(message) from None
        self.broken.pop(version, None)
        return version

    def _fetch(self, mv) -> tuple[Path, dict]:
        """A version's adapter, downloaded into this server's folder and checked: its digest, and that it
        was trained on this server's base. A failed one leaves no folder behind."""
        import mlflow

        folder = Path(tempfile.mkdtemp(prefix=f"v{mv.version}-", dir=self.downloads))
        try:
            mlflow.artifacts.download_artifacts(f"models:/{self.name}/{mv.version}", dst_path=str(folder))
            adapter_dir = folder / "artifacts" / "adapter"
            self._check_digest(mv, adapter_dir)
            meta = adapter.read(adapter_dir)
            if (
                meta.get("model") != self.base_model
                or (meta.get("base_revision") or self.base_revision) != self.base_revision
            ):
                raise invalid(
                    f"version {mv.version} of {self.name} was trained on {meta.get('model')!r} revision "
                    f"{meta.get('base_revision')}, not on this server's base {self.base_model!r} revision "
                    f"{self.base_revision}; serve it from its own server"
                )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return adapter_dir, meta

    def _select(self, params) -> str:
        version, alias = selected_version(params)
        if alias:
            if not self.name:
                raise invalid(f"alias {alias!r} asked for, but this server was not started from a models:/ URI")
            version = self._alias_version(alias)
            if version is None:
                raise invalid(f"alias {alias!r} is not set on {self.name}")
        return self._ensure(version) if version else self.default

    # ---- answering ------------------------------------------------------------------------------

    def prompt(self, row: dict, fmt: str) -> str:
        from jmed.prompts import apply_chat, render_prompt

        text = render_prompt(row["question"], row["choices"], fmt, row["n_answers"])
        return apply_chat(text, self.tokenizer) if fmt.startswith("chat") else text

    # The signature is given explicitly when logging. `pd.DataFrame` is the hint MLflow infers no schema
    # from: without a hint MLflow warns "Add type hints to the `predict` method" under a "once" filter of
    # its own, which no warnings filter of ours can reach.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        rows = check_inputs(model_input)  # in the request's own thread: a bad request fails alone
        version = self._select(params)
        served = self.adapters[version]
        protocol, max_new_tokens = check_params(params, served.protocol, served.format)
        self._prompts(rows, served.format)
        out = self.batcher.submit((version, protocol, max_new_tokens), rows)
        return pd.DataFrame(out, columns=OUTPUT_COLUMNS)

    def _prompts(self, rows: list[dict], fmt: str) -> None:
        """Each row's prompt, checked against the model's token limit before any model work."""
        from jmed.inference import over_limit

        for r in rows:
            r["prompt"] = self.prompt(r, fmt)
        over = over_limit(self.tokenizer, [r["prompt"] for r in rows], self.max_prompt_tokens)
        if over:
            raise invalid(
                "invalid input: "
                + "; ".join(
                    f"record {i}: the prompt is {n} tokens; at most {self.max_prompt_tokens}" for i, n in over[:20]
                )
            )

    def _run_batch(self, key: tuple, rows: list) -> list[dict]:
        """One engine call (on the batcher's thread) for rows of one version and one setting."""
        from jmed.engine import HFEngine
        from jmed.inference import answer_budget

        version, protocol, max_new_tokens = key
        served = self.adapters[version]
        with self.lock:
            if self.vllm is not None:
                engine = self.vllm.engine
            else:
                engine = HFEngine(self.model, self.tokenizer, len(rows), self.batch_tokens)
                if self.model.active_adapter != served.adapter_name:
                    self.model.set_adapter(served.adapter_name)
            prompts = [r["prompt"] for r in rows]
            if protocol == "loglik":
                # The same batched engine as evaluation: each prompt encoded once, letters or text scored.
                letters = base_format(served.format) == "igakuqa"
                conts = [list(LETTERS[: len(r["choices"])]) if letters else list(r["choices"]) for r in rows]
                scores = engine.loglik(prompts, conts)
                out = [self._picked(s, r) for s, r in zip(scores, rows)]
            else:
                limits = [
                    min(
                        max_new_tokens or answer_budget(self.tokenizer, r["choices"], r["n_answers"], protocol),
                        MAX_NEW_TOKENS_LIMIT,
                    )
                    for r in rows
                ]
                raws = engine.generate(prompts, limits)[0]
                out = [self._answer(raw, r, protocol) for raw, r in zip(raws, rows)]
        return [{**o, "model_version": version, **{old: o[new] for old, new in OLD_FIELD_ALIASES.items()}} for o in out]

    def _answer(self, raw: str, row: dict, protocol: str) -> dict:
        from jmed.metrics import letters_of, parse_letters, strip_reasoning, topk_by_gestalt
        from jmed.prompts import extract_response

        choices = row["choices"]
        answer = strip_reasoning(raw)  # as scoring does: letters weighed in <think>…</think> are not the answer
        if protocol == "letter":
            letters = parse_letters(answer, len(choices)) or ()
        else:
            letters = letters_of(topk_by_gestalt(extract_response(answer), choices, row["n_answers"]))
        return self._row(letters, row, raw)

    def _picked(self, scores: list[float], row: dict) -> dict:
        """Top-k choices by log-likelihood; the raw output shows every choice's score."""
        from jmed.metrics import letters_of, loglik_pick

        letters = letters_of(loglik_pick(scores, row["n_answers"]))
        return self._row(letters, row, json.dumps({a: round(s, 4) for a, s in zip(LETTERS, scores)}))

    @staticmethod
    def _row(letters, row: dict, raw) -> dict:
        from jmed.metrics import count_mismatch

        choices, letters = row["choices"], tuple(sorted(letters))
        text = "\n".join(choices[LETTERS.index(a)] for a in letters if LETTERS.index(a) < len(choices))
        return {
            "prediction": ",".join(letters),
            "answer_text": text,
            "response": raw,
            "n_answers": row["n_answers"],
            "count_mismatch": count_mismatch(letters, row["n_answers"]),
        }


mlflow.models.set_model(JmedModel())
