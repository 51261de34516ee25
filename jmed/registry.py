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
EVAL_KEYS = ("eval_data_digest", "protocol", "prompt_format", "shots")
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
    evaluation: tuple  # (eval_data_digest, protocol, prompt_format, shots)
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
    digest, protocol, fmt, shots = (list(evaluation) + ["?"] * 4)[:4]
    return f"data {str(digest)[:12]}, protocol {protocol}, format {fmt}, shots {shots}"


def _rank(c: Candidate):
    sec = c.secondary if c.secondary is not None else float("-inf")
    return (c.metric, sec, c.start_time, c.eval_run)


def decide(candidates: list[Candidate], champion: Champion | None, metric: str = "eval/accuracy",
           min_delta: float = 0.0) -> Decision:
    """Which candidate (if any) becomes champion. Pure: same inputs, same decision and reasons.

    Candidates are compared only on one evaluation (same data digest, protocol, prompt format, shots):
    the champion's, or, without a champion, the evaluation of the newest candidate. The best is the
    highest `metric`, then the higher secondary metric, then the newer run. It becomes champion only if
    there is none or it beats the champion's `metric` by more than `min_delta`.
    """
    reasons: list[str] = []
    scored = [c for c in candidates if c.metric is not None]
    if len(scored) < len(candidates):
        reasons.append(f"{len(candidates) - len(scored)} evaluate run(s) without metric {metric} ignored")
    if not scored:
        reasons.append("no evaluated adapter to consider")
        return Decision("none", None, champion, False, tuple(reasons))
    if champion is not None:
        target = tuple(champion.evaluation)
    else:
        target = tuple(max(scored, key=lambda c: (c.start_time, c.eval_run)).evaluation)
    same = [c for c in scored if tuple(c.evaluation) == target]
    others = len(scored) - len(same)
    if champion is not None and not same:
        reasons.append(
            f"champion v{champion.version} was evaluated on another evaluation ({describe_evaluation(target)}) "
            f"than all {len(scored)} candidate(s); not compared blindly — evaluate its adapter "
            f"(train run {champion.train_run}) on the same data and settings, then promote again")
        return Decision("keep", None, champion, False, tuple(reasons))
    if others:
        reasons.append(f"{others} candidate(s) evaluated on another evaluation than "
                       f"({describe_evaluation(target)}) not compared")
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
    """A clean copy of the jmed package (sources and presets; no caches, no sample data) for code_paths."""
    import shutil

    src = Path(__file__).parent
    pkg = dest / "jmed"
    pkg.mkdir(parents=True)
    for f in sorted(src.glob("*.py")) + [src / "presets.yaml"]:
        if f.exists():
            shutil.copy2(f, pkg / f.name)
    return pkg


def _base_folder(base: str, revision: str) -> Path:
    from jmed.models import resolve_model

    source, _ = resolve_model(base)  # tiny, a local folder, a GGUF file or named model (converted)
    if isinstance(source, Path):
        return source
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base, revision=revision or None))


def log_serving_model(adapter_dir, name: str = "model", bundle_base: bool | None = None):
    """Log jmed/serving.py as a pyfunc model (models-from-code) with the adapter and, for a small or local
    base (or `bundle_base=True`), the base model's folder; a hub base is referenced by id and revision.
    Needs an active run; returns mlflow's ModelInfo."""
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
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(SERVING_FILE), artifacts=artifacts, model_config=config,
            code_paths=[str(_code_copy(Path(tmp)))], pip_requirements=pip_requirements(quant != "none"),
            signature=signature(protocol), input_example=(pd.DataFrame([EXAMPLE]), {"max_new_tokens": 4}),
        )


# ---- reading the store ----------------------------------------------------------------------------


def _evaluation(params: dict) -> tuple:
    return tuple(str(params.get(k, "")) for k in EVAL_KEYS)


def _version_tag_evaluation(tags: dict) -> tuple:
    return tuple(str(tags.get(f"jmed.{k}", "")) for k in EVAL_KEYS)


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
    """Log the serving model of `cand`'s adapter in the active run and register it as a version of `name`."""
    import tempfile

    import mlflow

    eval_run = client.get_run(cand.eval_run)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=cand.train_run, artifact_path="adapter",
                                                          dst_path=tmp))
        meta = adapter.read(folder)
        info = log_serving_model(folder, bundle_base=bundle_base)
    tags = {tracking.TRAIN_RUN_TAG: cand.train_run, tracking.EVAL_RUN_TAG: cand.eval_run,
            tracking.BASE_TAG: eval_run.data.tags.get(tracking.BASE_TAG, ""),
            "jmed.base_revision": str(meta.get("base_revision", "")),
            "jmed.train_data_digest": str(meta.get("train_data_digest", "")),
            **{f"jmed.{k}": v for k, v in zip(EVAL_KEYS, cand.evaluation)}}
    tags.update({k: f"{v:.6g}" for k, v in eval_run.data.metrics.items() if k in LINEAGE_METRICS})
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    client.update_model_version(name, mv.version, _description(meta, tags, metric).replace("{name}", name))
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
    try:
        os.kill(int(parts[3]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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


def promote_one(client, base_slug: str, metric: str = "eval/accuracy", min_delta: float = 0.0,
                eval_runs: list[str] | None = None, bundle_base: bool | None = None) -> dict:
    """Decide and apply for one base model; returns the decision record (the first round's decision,
    and the champion as finally read).

    Rounds of read-decide-apply repeat until a round changes nothing. The lock serialises promoters
    where the store allows it; correctness does not depend on it: decisions are a pure function of
    the store's state (`decide`), registration is idempotent (`_canonical`), and the alias only moves
    to a candidate that beats the champion read in the same round, so concurrent promoters converge
    on the best candidate of the champion's evaluation."""
    name = model_name(base_slug)
    with promote_lock(client, name) as how:
        decision = version = None
        for _ in range(SETTLE_ROUNDS):
            current = champion(client, name, metric)
            cands = candidates(client, base_slug, metric, versions(client, name))
            if eval_runs:
                cands = [c for c in cands if c.eval_run in set(eval_runs)]
            d = decide(cands, current, metric, min_delta)
            v = d.candidate.version if d.candidate else None
            if d.register:
                v = _canonical(client, name, d.candidate, register(client, name, d.candidate, metric, bundle_base))
            if decision is None:
                decision, version = d, v
            if d.action != "promote":
                break
            if current is not None:
                _retrying(client.set_registered_model_alias, name, PREVIOUS, current.version)
            _retrying(client.set_registered_model_alias, name, CHAMPION, v)
        final = champion(client, name, metric)
    record = decision.to_dict()
    record.update(base_model=base_slug, registered_model=name, version=version, lock=how,
                  champion_version=final.version if final else None)
    return record


def promote(base_model: str = "", metric: str = "eval/accuracy", min_delta: float = 0.0,
            eval_runs: list[str] | None = None, bundle_base: bool | None = None) -> list[dict]:
    """`jmed promote`: one decision per base model (or the one given), logged in a `jmed.step=promote` run."""
    from mlflow import MlflowClient

    import mlflow
    from jmed.tracking import log_params, slug, step_run

    with step_run("promote", run_name="promote"):
        client = MlflowClient()
        log_params({"base_model": base_model, "metric": metric, "min_delta": min_delta,
                    "eval_runs": ",".join(eval_runs or [])})
        slugs = [slug(base_model)] if base_model else sorted(
            {r.data.tags.get(tracking.BASE_TAG, "") for r in evaluate_runs(client)} - {""})
        records = []
        for s in slugs:
            rec = promote_one(client, s, metric, min_delta, eval_runs, bundle_base)
            records.append(rec)
            mlflow.set_tags({f"jmed.decision.{s}": rec["action"],
                             f"jmed.champion.{s}": str(rec["champion_version"] or ""),
                             f"jmed.reasons.{s}": " | ".join(rec["reasons"])[:5000]})
            print(f"{rec['registered_model']}: {rec['action']} -> champion v{rec['champion_version']}")
            for r in rec["reasons"]:
                print(f"  - {r}")
        if not slugs:
            print("no evaluated adapters in this tracking store: nothing to promote")
        mlflow.log_dict({"metric": metric, "min_delta": min_delta, "decisions": records}, "promote/decisions.json")
    return records


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
        qs = [q for q in load_valid(path, questions_only=True) if q.choices]  # `jmed validate`'s checks
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


def predict_file(model_uri: str, path, protocol: str = "", max_new_tokens: int = 0, batch_size: int = 8):
    """Answer a file of questions offline with the served model; yields one result dict per question
    (`problem_id` and `prediction` as `jmed score --predictions` reads them)."""
    import mlflow
    import pandas as pd

    from jmed.tracking import setup

    ids, records = read_questions_file(path)
    setup()
    # the served model learns its URI (for `model_version`) from JMED_MODEL_URI; no alias polling here
    saved = {k: os.environ.get(k) for k in ("JMED_MODEL_URI", "JMED_SERVE_POLL_S")}
    os.environ.update({"JMED_MODEL_URI": model_uri, "JMED_SERVE_POLL_S": "0"})
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    params = {k: v for k, v in {"protocol": protocol, "max_new_tokens": max_new_tokens}.items() if v}
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        out = model.predict(pd.DataFrame(chunk), params=params or None)
        for rid, row in zip(ids[start:start + batch_size], out.to_dict("records")):
            yield {"problem_id": rid, "prediction": row["answer"], "answer_text": row["answer_text"],
                   "response": row["raw_output"], "model_version": row["model_version"]}
