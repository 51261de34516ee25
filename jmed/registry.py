"""The model registry (DESIGN.md §6): log the served model, register versions, promote a champion.

- `log_serving_model(adapter_dir, ...)`: the pyfunc of jmed/serving.py, logged as code (nothing pickled).
- `register(client, eval_run, ...)`: a version of `jmed-<slug>` with lineage tags and a readable description.
- `decide(...)`: the pure promotion decision (table-driven tests); `promote(...)` applies it per base model
  with the aliases `champion` and `previous`, under a lock, and logs a `jmed.step=promote` run.
- `serve(...)` / `predict_file(...)`: `jmed serve` and `jmed predict`.

Concurrency guarantee, by design rather than by locking. A promoter reads the champion and the
candidates, decides with the pure function `decide`, applies, and repeats until a round changes
nothing (`promote_one`). Three rules make racing promoters converge on any store, local or remote:
1. Decisions depend only on the store's state: every promoter that reads the same state decides the
   same; a promoter that read a stale state sees the newer one in its next round.
2. Registration is idempotent per (adapter, evaluation): a duplicate registered by a race is deleted by
   its own registrant, and the lowest version, which every later registrant sees, is kept (`_canonical`).
3. `champion` only moves to a candidate that beats, by more than min_delta, the champion read in the
   same round. If a stale promoter moves it to a worse candidate, its own next round (or any later
   promoter's) moves it back to the best, so the final champion is the best candidate of the
   champion's evaluation within min_delta.
The lock only saves work: an OS file lock (fcntl.flock) beside a local store, a lease tag (token,
expiry, host, pid) on the registered model for remote stores.
"""
from __future__ import annotations

from jmed import adapter, tracking

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CHAMPION = "champion"
PREVIOUS = "previous"
SECONDARY = {"eval/accuracy": "eval/score", "eval/score": "eval/accuracy",
             "eval/gestalt_accuracy": "eval/gestalt", "eval/exact_match": "eval/gestalt"}
ADAPTER_DIGEST_TAG = "jmed.adapter_sha256"  # the adapter folder's bytes when registered (jmed.adapter.digest)
EVAL_KEYS = ("eval_data_digest", "protocol", "prompt_format", "shots", "engine")
# runs and versions from before a key existed: what they were measured with
EVAL_KEY_DEFAULTS = {"engine": "hf"}
LINEAGE_METRICS = ("eval/accuracy", "eval/score", "eval/required_score", "eval/exact_match", "eval/gestalt",
                   "eval/gestalt_accuracy", "eval/unparsed")


def model_name(base_slug: str) -> str:
    return f"jmed-{base_slug}"


# ---- the pure decision --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A FINISHED evaluate run of an adapter."""

    eval_run: str
    train_run: str
    evaluation: tuple  # (eval_data_digest, protocol, prompt_format, shots, engine)
    metric: float | None
    secondary: float | None = None
    start_time: int = 0  # ms; newer wins a full tie
    version: str | None = None  # registered version holding this eval run, if any


@dataclass(frozen=True)
class Champion:
    version: str
    eval_run: str
    train_run: str
    evaluation: tuple
    metric: float | None


@dataclass(frozen=True)
class Decision:
    action: str  # "promote" (move champion to candidate) | "keep" | "none" (no candidate at all)
    candidate: Candidate | None
    champion: Champion | None
    register: bool  # the candidate must be registered first
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"action": self.action, "register": self.register, "reasons": list(self.reasons),
                "candidate": asdict(self.candidate) if self.candidate else None,
                "champion": asdict(self.champion) if self.champion else None}


def describe_evaluation(evaluation: tuple) -> str:
    digest, protocol, fmt, shots, engine = (list(evaluation) + ["?"] * 5)[:5]
    return f"data {str(digest)[:12]}, protocol {protocol}, format {fmt}, shots {shots}, engine {engine}"


def _rank(c: Candidate):
    sec = c.secondary if c.secondary is not None else float("-inf")
    return (c.metric, sec, c.start_time, c.eval_run)


def on_evaluation(champion: Champion | None, candidates: list[Candidate], evaluation: tuple) -> Champion | None:
    """The champion as measured on `evaluation`: its adapter's newest evaluate run there when one exists
    (a champion is ranked by its adapter, whichever run measured it), else unchanged."""
    if champion is None or tuple(champion.evaluation) == tuple(evaluation):
        return champion
    there = [c for c in candidates if c.train_run == champion.train_run and tuple(c.evaluation) == tuple(evaluation)
             and c.metric is not None]
    if not there:
        return champion
    best = max(there, key=lambda c: (c.start_time, c.eval_run))
    return Champion(champion.version, best.eval_run, champion.train_run, tuple(evaluation), best.metric)


def decide(candidates: list[Candidate], champion: Champion | None, metric: str = "eval/accuracy",
           min_delta: float = 0.0, evaluation: tuple | None = None) -> Decision:
    """Which candidate (if any) becomes champion. Pure: same inputs, same decision and reasons.

    Candidates are compared only on one evaluation (same data digest, protocol, prompt format, shots):
    `evaluation`, the one the registered model declares (`jmed promote --evaluation`); without one, the
    champion's, or, without a champion, the evaluation of the newest candidate. The champion counts with
    its adapter's result on that evaluation (`on_evaluation`). The best is the highest `metric`, then the
    higher secondary metric, then the newer run. It becomes champion only if there is none or it beats
    the champion's `metric` by more than `min_delta`.
    """
    reasons: list[str] = []
    scored = [c for c in candidates if c.metric is not None]
    if len(scored) < len(candidates):
        reasons.append(f"{len(candidates) - len(scored)} evaluate run(s) without metric {metric} ignored")
    if not scored:
        reasons.append("no evaluated adapter to consider")
        return Decision("none", None, champion, False, tuple(reasons))
    if evaluation:
        target = tuple(evaluation)
    elif champion is not None:
        target = tuple(champion.evaluation)
    else:
        target = tuple(max(scored, key=lambda c: (c.start_time, c.eval_run)).evaluation)
    champion = on_evaluation(champion, scored, target)
    same = [c for c in scored if tuple(c.evaluation) == target]
    others = [c for c in scored if tuple(c.evaluation) != target  # the champion's own runs elsewhere do not compete
              and (champion is None or c.train_run != champion.train_run)]
    switch = (f"`jmed promote --evaluation {max(others, key=lambda c: (c.start_time, c.eval_run)).eval_run}` ranks on "
              "the newest of theirs (the champion is re-evaluated there)") if others else ""
    if champion is not None and tuple(champion.evaluation) != target:
        reasons.append(
            f"champion v{champion.version} has no evaluation on the ranking evaluation ({describe_evaluation(target)}); "
            f"not compared blindly: `jmed promote --evaluation <an eval run on that data>` evaluates it there and "
            f"compares")
        return Decision("keep", None, champion, False, tuple(reasons))
    if not same:
        reasons.append(f"no candidate was evaluated on the ranking evaluation ({describe_evaluation(target)}); "
                       f"{switch}")
        return Decision("keep", None, champion, False, tuple(reasons))
    if others:
        reasons.append(f"{len(others)} candidate(s) evaluated on another evaluation than the ranking one "
                       f"({describe_evaluation(target)}) not compared; {switch}")
    best = max(same, key=_rank)
    ties = [c for c in same if c.metric == best.metric and c is not best]
    what = f"eval run {best.eval_run} (train run {best.train_run}) {metric}={best.metric:.6g}"
    if ties:
        reasons.append(f"{len(ties) + 1} candidates tie on {metric}={best.metric:.6g}; "
                       "chosen by secondary metric, then the newer run")
    register = best.version is None
    if champion is None:
        reasons.append(f"no champion yet: {what} becomes champion")
        return Decision("promote", best, None, register, tuple(reasons))
    if best.train_run == champion.train_run or best.eval_run == champion.eval_run:
        reasons.append(f"champion v{champion.version} is already the best: {what}")
        return Decision("keep", best, champion, False, tuple(reasons))
    if register:
        reasons.append(f"{what} is not a registered version yet: registered")
    if champion.metric is None:
        reasons.append(f"champion v{champion.version} has no {metric}; {what} replaces it")
        return Decision("promote", best, champion, register, tuple(reasons))
    delta = best.metric - champion.metric
    if delta > min_delta:
        reasons.append(f"{what} beats champion v{champion.version} ({champion.metric:.6g}) "
                       f"by {delta:.6g} > min_delta {min_delta:g}")
        return Decision("promote", best, champion, register, tuple(reasons))
    reasons.append(f"best candidate {what} does not beat champion v{champion.version} "
                   f"({champion.metric:.6g}) by more than min_delta {min_delta:g} (delta {delta:.6g})")
    return Decision("keep", best, champion, register, tuple(reasons))


# ---- the served model -----------------------------------------------------------------------------

SERVE_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate",
                  "pandas", "numpy")
SERVING_FILE = Path(__file__).with_name("serving.py")
EXAMPLE = {"question": "急性虫垂炎で最も多くみられる初発症状はどれか。",
           "choices": ["心窩部痛", "右下腹部痛", "発熱", "下痢", "血便"], "n_answers": 1}


def pip_requirements(quantized: bool = False) -> list[str]:
    """Exact pins of what the served model imports, from the installed versions (never inferred)."""
    from importlib.metadata import version

    names = SERVE_PACKAGES + (("bitsandbytes",) if quantized else ())
    return [f"{n}=={version(n).split('+')[0]}" for n in names]


def signature(protocol: str):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from jmed.contract import DEFAULT_MAX_NEW_TOKENS

    # No input schema: MLflow would convert before the model sees the request (objects and nulls in
    # `choices` became strings, "1", 1.5 and true became n_answers, extra columns were dropped), so bad
    # input got 200. jmed.contract checks the raw rows instead, naming record and field (HTTP 400), and
    # accepts every request form MLflow documents (records, split, instances, columnar inputs).
    return ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("string", "answer"), ColSpec("string", "answer_text"),
                        ColSpec("string", "raw_output"), ColSpec("string", "model_version")]),
        params=ParamSchema([ParamSpec("protocol", "string", protocol),
                            ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS),
                            ParamSpec("version", "string", ""), ParamSpec("alias", "string", "")]),
    )


def _code_copy(dest: Path) -> Path:
    """A clean copy of the jmed package (sources of every subpackage, e.g. readers/ and exams/, and presets;
    no caches, no sample data) for code_paths."""
    import shutil

    src = Path(__file__).parent
    pkg = dest / "jmed"
    pkg.mkdir(parents=True)
    for f in sorted(src.rglob("*.py")) + [src / "presets.yaml"]:
        if f.exists() and "__pycache__" not in f.parts:
            (pkg / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, pkg / f.relative_to(src))
    return pkg


def _base_folder(base: str, revision: str) -> Path:
    from jmed.models import resolve_model

    source, _ = resolve_model(base)  # tiny, a local folder, a GGUF file or named model (converted)
    if isinstance(source, Path):
        return source
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base, revision=revision or None))


def log_serving_model(adapter_dir, name: str = "model", bundle_base: bool | None = None, run_id: str | None = None):
    """Log jmed/serving.py as a pyfunc model (models-from-code) with the adapter and, for a small or local
    base (or `bundle_base=True`), the base model's folder; a hub base is referenced by id and revision.
    Logged into `run_id` (promotion: the evaluate run that ranked it, so that run's page links to the
    registered version), else the active run; returns mlflow's ModelInfo."""
    import tempfile

    import mlflow
    import pandas as pd

    adapter_dir = Path(adapter_dir)
    meta = adapter.read(adapter_dir)
    base, revision = meta["model"], meta.get("base_revision", "")
    # A named model (smollm2-135m …) is referenced like a hub id: its package installs it anywhere.
    local = base == "tiny" or Path(base).is_dir() or Path(base).suffix.lower() == ".gguf"
    bundle = local if bundle_base is None else bool(bundle_base)
    artifacts = {"adapter": str(adapter_dir)}
    if bundle:
        folder = _base_folder(base, revision)
        if not any(folder.glob("*.safetensors")):
            raise ValueError(f"base model folder {folder} has no *.safetensors weights; convert it first "
                             "(served models carry weights as safetensors only)")
        artifacts["base"] = str(folder)
    quant = str(meta.get("config", {}).get("quantization", "none"))
    config = {"base_model": base, "base_revision": revision, "bundled": bundle, "quantization": quant}
    protocol = adapter.protocol(meta)
    with tempfile.TemporaryDirectory() as tmp:
        # mlflow.models.Model.log is what pyfunc.log_model calls; it alone takes a run other than the active one
        return mlflow.models.Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, python_model=str(SERVING_FILE), artifacts=artifacts,
            model_config=config,
            code_paths=[str(_code_copy(Path(tmp)))], pip_requirements=pip_requirements(quant != "none"),
            signature=signature(protocol), input_example=(pd.DataFrame([EXAMPLE]), {"max_new_tokens": 4}),
        )


# ---- reading the store ----------------------------------------------------------------------------


def _evaluation(params: dict) -> tuple:
    return tuple(str(params.get(k, "") or EVAL_KEY_DEFAULTS.get(k, "")) for k in EVAL_KEYS)


def _version_tag_evaluation(tags: dict) -> tuple:
    return tuple(str(tags.get(f"jmed.{k}", "") or EVAL_KEY_DEFAULTS.get(k, "")) for k in EVAL_KEYS)


def evaluate_runs(client, base_slug: str = "") -> list:
    """FINISHED evaluate runs of an adapter with a known train run (any experiment)."""
    return tracking.evaluate_runs(client, base_slug=base_slug, adapters_only=True)


def versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        return []


def _version_key(train_run: str, evaluation: tuple) -> tuple:
    return (train_run, tuple(evaluation))


def candidates(client, base_slug: str, metric: str, known: list) -> list[Candidate]:
    by_key = {_version_key(v.tags.get(tracking.TRAIN_RUN_TAG, ""), _version_tag_evaluation(v.tags)): str(v.version)
              for v in known}
    out = []
    for r in evaluate_runs(client, base_slug):
        train_run = r.data.tags[tracking.ADAPTER_RUN_TAG]
        ev = _evaluation(r.data.params)
        out.append(Candidate(
            eval_run=r.info.run_id, train_run=train_run, evaluation=ev,
            metric=r.data.metrics.get(metric), secondary=r.data.metrics.get(SECONDARY.get(metric, "")),
            start_time=int(r.info.start_time or 0), version=by_key.get(_version_key(train_run, ev))))
    return out


def champion(client, name: str, metric: str) -> Champion | None:
    from mlflow.exceptions import MlflowException

    try:
        v = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    eval_run = v.tags.get(tracking.EVAL_RUN_TAG, "")
    value = None
    try:
        value = client.get_run(eval_run).data.metrics.get(metric)
    except MlflowException:
        pass
    if value is None and v.tags.get(metric):
        value = float(v.tags[metric])
    return Champion(str(v.version), eval_run, v.tags.get(tracking.TRAIN_RUN_TAG, ""),
                    _version_tag_evaluation(v.tags), value)


# ---- registering ----------------------------------------------------------------------------------


def _description(meta: dict, tags: dict, metric: str) -> str:
    cfg = meta.get("config", {})
    keys = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "quantization", "learning_rate",
            "max_steps", "epochs", "batch_size", "seed", "preset")
    settings = ", ".join(f"{k}={cfg[k]}" for k in keys if cfg.get(k) not in (None, ""))
    metrics = ", ".join(f"{k} {tags[k]}" for k in LINEAGE_METRICS if k in tags)
    return (
        f"LoRA adapter for base model {meta.get('model')} (revision {meta.get('base_revision', '?')}), "
        f"prompt format {tags['jmed.prompt_format']}, answered with the {tags['jmed.protocol']} protocol.\n\n"
        f"Trained in run {tags['jmed.train_run']} on data {tags.get('jmed.train_data_digest', '?')[:12]} "
        f"({settings}).\n"
        f"Evaluated in run {tags['jmed.eval_run']} on data {tags['jmed.eval_data_digest'][:12]} "
        f"(shots {tags['jmed.shots']}): {metrics or 'no metrics'}. Ranked by {metric}.\n\n"
        f"Serve: mlflow models serve -m models:/{{name}}@champion --env-manager local"
    )


def register(client, name: str, cand: Candidate, metric: str = "eval/accuracy", bundle_base: bool | None = None):
    """Log the serving model of `cand`'s adapter into its evaluate run and register it as a version of `name`."""
    import tempfile

    import mlflow

    eval_run = client.get_run(cand.eval_run)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=cand.train_run, artifact_path="adapter",
                                                          dst_path=tmp))
        meta = adapter.read(folder)
        digest = adapter.digest(folder)
        info = log_serving_model(folder, name="served-model", bundle_base=bundle_base, run_id=cand.eval_run)
    tags = {tracking.TRAIN_RUN_TAG: cand.train_run, tracking.EVAL_RUN_TAG: cand.eval_run,
            tracking.BASE_TAG: eval_run.data.tags.get(tracking.BASE_TAG, ""),
            "jmed.base_revision": str(meta.get("base_revision", "")),
            "jmed.train_data_digest": str(meta.get("train_data_digest", "")),
            ADAPTER_DIGEST_TAG: digest,
            **{f"jmed.{k}": v for k, v in zip(EVAL_KEYS, cand.evaluation)}}
    tags.update({k: f"{v:.6g}" for k, v in eval_run.data.metrics.items() if k in LINEAGE_METRICS})
    # Created from the evaluate run that ranked it (run_id), so that run's page links to the version.
    mv = client.create_model_version(name, info.model_uri, run_id=cand.eval_run, tags=tags, model_id=info.model_id,
                                     description=_description(meta, tags, metric).replace("{name}", name))
    return str(mv.version)


# ---- promote --------------------------------------------------------------------------------------


def _local_store_file(uri: str) -> Path | None:
    """The file or folder of a local tracking store (where the OS lock lives); None for remote stores."""
    from urllib.parse import urlparse

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
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
            time.sleep(min(2.0, 0.05 * 2 ** i) * (0.5 + random.random()))


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
            raise TimeoutError(f"promotion lease on {name} held by {held} (token, expiry, host, pid); it expires "
                               f"at {until} or is broken as soon as that process is gone")
        time.sleep(1.0)
    try:
        yield f"lease tag {LEASE_TAG} on {name}"
    finally:
        if held_now().startswith(token):
            _retrying(client.delete_registered_model_tag, name, LEASE_TAG)


SETTLE_ROUNDS = 5  # decide-apply rounds until a re-read changes nothing (racing promoters converge)


def _canonical(client, name: str, cand: "Candidate", mine: str) -> str:
    """Registration is idempotent per (adapter, evaluation): when racing promoters registered the same
    candidate more than once, the lowest version wins and every other registrant deletes its own copy.
    Version numbers grow in commit order, so a later registrant always sees the earlier version."""
    key = _version_key(cand.train_run, cand.evaluation)
    same = sorted(int(v.version) for v in versions(client, name)
                  if _version_key(v.tags.get(tracking.TRAIN_RUN_TAG, ""), _version_tag_evaluation(v.tags)) == key)
    first = str(same[0]) if same else mine
    if first != mine:
        _retrying(client.delete_model_version, name, mine)
    return first


EVALUATION_TAG = "jmed.evaluation"  # on the registered model: the ranking evaluation, JSON [digest, protocol, format, shots, engine]
EVALUATION_DATA_TAG = "jmed.evaluation_data"  # its data path and the eval run that declared it (for messages)


def declared_evaluation(client, name: str) -> tuple | None:
    """The evaluation a registered model ranks its versions on, or None before the first promotion."""
    import json

    from mlflow.exceptions import MlflowException

    try:
        raw = client.get_registered_model(name).tags.get(EVALUATION_TAG, "")
    except MlflowException:
        return None
    if not raw:
        return None
    declared = [str(v) for v in json.loads(raw)]
    # declared before a key existed (jmed 0.2 declared 4): the key's default fills it
    declared += [EVAL_KEY_DEFAULTS.get(k, "") for k in EVAL_KEYS[len(declared):]]
    return tuple(declared)


def declare_evaluation(client, name: str, evaluation: tuple, data: str, eval_run: str) -> None:
    import json

    _retrying(client.set_registered_model_tag, name, EVALUATION_TAG, json.dumps(list(evaluation)))
    _retrying(client.set_registered_model_tag, name, EVALUATION_DATA_TAG, f"{data} (eval run {eval_run})")


def _ensure_model(client, name: str, base_slug: str) -> None:
    """Create the registered model with its description (MLflow would create it bare on first register)."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        client.create_registered_model(name, description=(
            f"LoRA adapters of base model `{base_slug}` for Japanese medical exam questions, trained and "
            f"evaluated by jmed. The `{CHAMPION}` alias is the best version on the ranking evaluation (tag "
            f"`{EVALUATION_TAG}`); `{PREVIOUS}` is the one it replaced. Change the ranking evaluation with "
            f"`jmed promote --base-model {base_slug} --evaluation <eval run id or data>`."))


def _note_promotion(client, name: str, version: str, d: Decision, metric: str) -> None:
    """A promoted version's description says which version it replaced and by how much."""
    if d.champion is None:
        note = "Promoted to champion: the first one of this model."
    elif d.champion.metric is None or d.candidate is None:
        note = f"Promoted to champion, replacing v{d.champion.version} (which had no {metric})."
    else:
        note = (f"Promoted to champion, replacing v{d.champion.version}: {metric} {d.candidate.metric:.6g} vs "
                f"{d.champion.metric:.6g} ({d.candidate.metric - d.champion.metric:+.6g}) on "
                f"{describe_evaluation(d.candidate.evaluation)}.")
    old = _retrying(client.get_model_version, name, version).description or ""
    _retrying(client.update_model_version, name, version, f"{old}\n\n{time.strftime('%Y-%m-%d')}: {note}".strip())


def promote_one(client, base_slug: str, metric: str = "eval/accuracy", min_delta: float = 0.0,
                eval_runs: list[str] | None = None, bundle_base: bool | None = None) -> dict:
    """Decide and apply for one base model; returns the decision record (the first round's decision,
    and the champion as finally read).

    Rounds of read-decide-apply repeat until a round changes nothing. The lock serialises promoters
    where the store allows it; correctness does not depend on it: decisions are a pure function of
    the store's state (`decide`), registration is idempotent (`_canonical`), and the alias only moves
    to a candidate that beats the champion read in the same round, so concurrent promoters converge
    on the best candidate of the ranking evaluation. The first promotion declares that evaluation."""
    name = model_name(base_slug)
    _ensure_model(client, name, base_slug)
    with promote_lock(client, name) as how:
        decision = version = None
        for _ in range(SETTLE_ROUNDS):
            current = champion(client, name, metric)
            declared = declared_evaluation(client, name)
            cands = candidates(client, base_slug, metric, versions(client, name))
            if eval_runs:
                cands = [c for c in cands if c.eval_run in set(eval_runs)]
            d = decide(cands, current, metric, min_delta, evaluation=declared)
            v = d.candidate.version if d.candidate else None
            if d.register:
                v = _canonical(client, name, d.candidate, register(client, name, d.candidate, metric, bundle_base))
            if decision is None:
                decision, version = d, v
            if d.action != "promote":
                break
            if declared is None:
                data = client.get_run(d.candidate.eval_run).data.params.get("eval_data_path", "")
                declare_evaluation(client, name, d.candidate.evaluation, data, d.candidate.eval_run)
            if current is not None:
                _retrying(client.set_registered_model_alias, name, PREVIOUS, current.version)
            _retrying(client.set_registered_model_alias, name, CHAMPION, v)
            _note_promotion(client, name, v, d, metric)
        final = champion(client, name, metric)
    record = decision.to_dict()
    record.update(base_model=base_slug, registered_model=name, version=version, lock=how,
                  champion_version=final.version if final else None)
    return record


def _looks_like_run_id(ref: str) -> bool:
    import re

    return bool(re.fullmatch(r"[0-9a-f]{32}", ref))


def switch_evaluation(client, base_slug: str, ref: str, metric: str = "eval/accuracy") -> tuple:
    """`jmed promote --evaluation REF`: rank versions on the evaluation of eval run REF, or on data
    REF with the champion's own evaluation settings. The champion's adapter is evaluated there unless
    an evaluation of it exists (then it is reused), so the comparison that follows is like for like.
    Returns the declared evaluation."""
    import dataclasses

    import mlflow
    from mlflow.exceptions import MlflowException

    from jmed import data as D
    from jmed.config import EvalConfig, flat, from_flat
    from jmed.evaluate import evaluate, load_eval_questions

    name = model_name(base_slug)
    _ensure_model(client, name, base_slug)
    current = champion(client, name, metric)
    if _looks_like_run_id(ref):
        try:
            run = client.get_run(ref)
        except MlflowException as exc:
            raise ValueError(f"--evaluation {ref}: no such run in {tracking.shown_uri()}") from exc
        if run.data.tags.get(tracking.STEP_TAG) != "evaluate":
            raise ValueError(f"--evaluation {ref}: run is a {run.data.tags.get(tracking.STEP_TAG, 'non-jmed')} run, "
                             "not an evaluate run")
        cfg, path = from_flat(EvalConfig, run.data.params), run.data.params.get("eval_data_path", "")
        evaluation, defined_by = _evaluation(run.data.params), ref
    else:
        if current is None:
            raise ValueError(f"--evaluation {ref}: {name} has no champion whose settings could evaluate that data; "
                             f"evaluate an adapter on it (jmed evaluate --eval-data {ref} …) and pass that run id")
        cfg = dataclasses.replace(from_flat(EvalConfig, client.get_run(current.eval_run).data.params), eval_data=ref)
        path, questions = load_eval_questions(cfg)
        evaluation = _evaluation({**flat(cfg), "eval_data_digest": D.digest(questions)})
        defined_by = ""
    if current is not None:
        there = [c for c in candidates(client, base_slug, metric, []) if c.train_run == current.train_run
                 and c.evaluation == evaluation]
        if there:
            print(f"[jmed] champion v{current.version} was already evaluated there: eval run {there[0].eval_run}")
            defined_by = defined_by or there[0].eval_run
        else:
            print(f"[jmed] evaluating champion v{current.version} (train run {current.train_run}) on {path}")
            cfg = dataclasses.replace(cfg, adapter=f"runs:/{current.train_run}/adapter", compare_base=False)
            with mlflow.start_run(nested=mlflow.active_run() is not None,
                                  run_name=f"evaluate-champion-v{current.version}"):
                there_run = evaluate(cfg)
            defined_by = defined_by or there_run
    declare_evaluation(client, name, evaluation, path, defined_by)
    return evaluation


def promote(base_model: str = "", metric: str = "eval/accuracy", min_delta: float = 0.0,
            eval_runs: list[str] | None = None, bundle_base: bool | None = None, evaluation: str = "") -> list[dict]:
    """`jmed promote`: one decision per base model (or the one given), logged in a `jmed.step=promote` run.
    `evaluation` (an eval run id or data): first switch the ranking evaluation (`switch_evaluation`)."""
    from mlflow import MlflowClient

    import mlflow
    from jmed.console import say
    from jmed.tracking import log_params, slug, step_run

    with step_run("promote", run_name="promote"):
        client = MlflowClient()
        log_params({"base_model": base_model, "metric": metric, "min_delta": min_delta,
                    "eval_runs": ",".join(eval_runs or []), "evaluation": evaluation})
        evaluated = sorted({r.data.tags.get(tracking.BASE_TAG, "") for r in evaluate_runs(client)} - {""})
        slugs = [slug(base_model)] if base_model else evaluated
        if base_model and slug(base_model) not in evaluated:  # a typo must not look like "nothing to do"
            raise ValueError(f"no evaluated adapter of base model {base_model!r} in {tracking.shown_uri()}"
                             + (f"; evaluated base models: {', '.join(evaluated)}" if evaluated else ""))
        if evaluation:
            if len(slugs) != 1:
                raise ValueError("--evaluation needs one base model: pass --base-model"
                                 + (f" (evaluated: {', '.join(slugs)})" if slugs else ""))
            ranked = switch_evaluation(client, slugs[0], evaluation, metric)
            say(f"[jmed] {model_name(slugs[0])} is now ranked on {describe_evaluation(ranked)}")
        records = []
        for s in slugs:
            rec = promote_one(client, s, metric, min_delta, eval_runs, bundle_base)
            records.append(rec)
            mlflow.set_tags({f"jmed.decision.{s}": rec["action"],
                             f"jmed.champion.{s}": str(rec["champion_version"] or ""),
                             f"jmed.reasons.{s}": " | ".join(rec["reasons"])[:5000]})
            say(sentence(rec))
        if not slugs:
            say("[jmed] promote: no evaluated adapters in this tracking store, nothing to promote")
        mlflow.set_tag("mlflow.note.content", "\n\n".join(sentence(r) for r in records) or "nothing to promote")
        mlflow.log_dict({"metric": metric, "min_delta": min_delta, "decisions": records}, "promote/decisions.json")
    return records


def sentence(rec: dict) -> str:
    """A promotion decision and its reasons in one sentence."""
    name, now = rec["registered_model"], rec["champion_version"]
    before = (rec.get("champion") or {}).get("version")
    if rec["action"] == "promote":
        head = f"v{now} is the new champion" + (f" (was v{before})" if before else "")
    elif now:
        head = f"champion stays v{now}"
    else:
        head = "no champion"
    return f"[jmed] promote {name}: {head}: " + "; ".join(rec["reasons"]) + "."


# ---- serve and predict ----------------------------------------------------------------------------


def champion_uri(base_model: str = "") -> str:
    """models:/jmed-<slug>@champion for the base model given, or the only registered jmed model."""
    from mlflow import MlflowClient

    from jmed.tracking import setup, slug

    setup()
    client = MlflowClient()
    if base_model:
        names = [model_name(slug(base_model))]
    else:
        names = sorted(m.name for m in client.search_registered_models("name LIKE 'jmed-%'")
                       if CHAMPION in (m.aliases or {}))
        if len(names) != 1:
            raise ValueError("no registered model has a champion yet; run `jmed promote`" if not names else
                             f"several base models have a champion ({', '.join(names)}); choose one with --base-model")
    if champion(client, names[0], "eval/accuracy") is None:
        raise ValueError(f"registered model {names[0]} has no '{CHAMPION}' alias; run `jmed promote` first")
    return f"models:/{names[0]}@{CHAMPION}"


def read_questions_file(path) -> tuple[list[str], list[dict]]:
    """(ids, records) from a JSONL file of {id?, question, choices, n_answers?} or any format jmed.data reads.
    Bad lines raise ValueError naming file:line:field."""
    from jmed.checks import load_valid
    from jmed.data import jsonl_objects
    from jmed.contract import check_inputs

    path = Path(path)
    objects, bad = jsonl_objects(path)
    if not (objects and "question" in objects[0][1]):  # not plain records: a dataset format jmed.data reads
        valid = load_valid(path, questions_only=True)  # `jmed validate`'s checks
        qs = [q for q in valid if q.choices and not q.no_prompt]
        if len(qs) < len(valid):  # a served model answers choices; say which questions it cannot
            import sys

            print(f"[jmed] predict: {len(valid) - len(qs)} question(s) left out (numeric entry, or no prompt can be "
                  "made of them): " + ", ".join(q.id for q in valid if q not in qs)[:300], file=sys.stderr)
        return [q.id for q in qs], [{"question": q.stem, "choices": list(q.choices),
                                     "n_answers": q.n_answers or 1} for q in qs]
    ids, records, errors = [], [], [str(e) for e in bad]
    for no, rec in objects:
        rid = str(rec.pop("id", rec.pop("problem_id", no)))
        try:
            check_inputs([rec])
        except Exception as e:  # MlflowException from the same checks the server applies
            errors.append(f"{path}:{no}: {getattr(e, 'message', str(e)).removeprefix('invalid input: record 0: ')}")
            continue
        ids.append(rid)
        records.append(rec)
    if errors:
        raise ValueError(f"{len(errors)} bad line(s):\n" + "\n".join(errors[:20]))
    if not records:
        raise ValueError(f"{path}: no questions")
    return ids, records


def predict_file(model_uri: str, path, protocol: str = "", max_new_tokens: int = 0, batch_size: int = 8,
                 engine: str = "hf"):
    """Answer a file of questions offline with the served model; yields one result dict per question
    (`problem_id` and `prediction` as `jmed score --predictions` reads them)."""
    import mlflow
    import pandas as pd

    from jmed.tracking import setup

    ids, records = read_questions_file(path)
    setup()
    # the served model learns its URI (for `model_version`) from JMED_MODEL_URI; no alias polling here
    saved = {k: os.environ.get(k) for k in ("JMED_MODEL_URI", "JMED_SERVE_POLL_S", "JMED_ENGINE")}
    os.environ.update({"JMED_MODEL_URI": model_uri, "JMED_SERVE_POLL_S": "0", "JMED_ENGINE": engine})
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    params = {k: v for k, v in {"protocol": protocol, "max_new_tokens": max_new_tokens}.items() if v}
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            out = model.predict(pd.DataFrame(chunk), params=params or None)
            for rid, row in zip(ids[start:start + batch_size], out.to_dict("records")):
                yield {"problem_id": rid, "prediction": row["answer"], "answer_text": row["answer_text"],
                       "response": row["raw_output"], "model_version": row["model_version"]}
    finally:
        engine_of = getattr(model.unwrap_python_model(), "vllm", None)
        if engine_of is not None:
            engine_of.close()  # the vLLM server predict started
