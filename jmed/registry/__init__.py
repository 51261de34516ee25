"""The model registry: register versions and promote a champion per base model (`jmed promote`).

Its parts: `decision` (the pure decision), `store` (reading the store), `lease` (exclusive promotion),
`packaging` (the served pyfunc model) and `predict` (`jmed serve` / `jmed predict`); their public names
are importable from here.

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

import contextlib
import time
from pathlib import Path

from jmed import adapter, tracking
from jmed.registry.decision import (  # noqa: F401  (public names of the registry)
    CHAMPION,
    PREVIOUS,
    SECONDARY,
    Candidate,
    Champion,
    Decision,
    decide,
    describe_evaluation,
    on_evaluation,
)
from jmed.registry.lease import LEASE_TAG, _local_store_file, _retrying, promote_lock  # noqa: F401
from jmed.registry.packaging import log_serving_model, pip_requirements, signature  # noqa: F401
from jmed.registry.predict import champion_uri, predict_file, read_questions_file  # noqa: F401
from jmed.registry.store import (  # noqa: F401
    EVAL_KEY_DEFAULTS,
    EVAL_KEYS,
    EVALUATION_DATA_TAG,
    EVALUATION_TAG,
    _evaluation,
    _version_key,
    _version_tag_evaluation,
    candidates,
    champion,
    declare_evaluation,
    declared_evaluation,
    evaluate_runs,
    model_name,
    versions,
)

ADAPTER_DIGEST_TAG = adapter.DIGEST_TAG  # the adapter folder's bytes when registered (jmed.adapter.digest)


LINEAGE_METRICS = (
    "eval/accuracy",
    "eval/score",
    "eval/required_score",
    "eval/exact_match",
    "eval/gestalt",
    "eval/gestalt_accuracy",
    "eval/unparsed",
)


def _description(meta: dict, tags: dict, metric: str) -> str:
    cfg = meta.get("config", {})
    keys = (
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "quantization",
        "learning_rate",
        "max_steps",
        "epochs",
        "batch_size",
        "seed",
        "preset",
    )
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
        folder = Path(mlflow.artifacts.download_artifacts(run_id=cand.train_run, artifact_path="adapter", dst_path=tmp))
        meta = adapter.read(folder)
        digest = adapter.digest(folder)
        info = log_serving_model(folder, name="served-model", bundle_base=bundle_base, run_id=cand.eval_run)
    tags = {
        tracking.TRAIN_RUN_TAG: cand.train_run,
        tracking.EVAL_RUN_TAG: cand.eval_run,
        tracking.BASE_TAG: eval_run.data.tags.get(tracking.BASE_TAG, ""),
        "jmed.base_revision": str(meta.get("base_revision", "")),
        "jmed.train_data_digest": str(meta.get("train_data_digest", "")),
        ADAPTER_DIGEST_TAG: digest,
        **{f"jmed.{k}": v for k, v in zip(EVAL_KEYS, cand.evaluation)},
    }
    tags.update({k: f"{v:.6g}" for k, v in eval_run.data.metrics.items() if k in LINEAGE_METRICS})
    # Created from the evaluate run that ranked it (run_id), so that run's page links to the version.
    mv = client.create_model_version(
        name,
        info.model_uri,
        run_id=cand.eval_run,
        tags=tags,
        model_id=info.model_id,
        description=_description(meta, tags, metric).replace("{name}", name),
    )
    return str(mv.version)


SETTLE_ROUNDS = 5  # decide-apply rounds until a re-read changes nothing (racing promoters converge)


def _canonical(client, name: str, cand: "Candidate", mine: str) -> str:
    """Registration is idempotent per (adapter, evaluation): when racing promoters registered the same
    candidate more than once, the lowest version wins and every other registrant deletes its own copy.
    Version numbers grow in commit order, so a later registrant always sees the earlier version."""
    key = _version_key(cand.train_run, cand.evaluation)
    same = sorted(
        int(v.version)
        for v in versions(client, name)
        if _version_key(v.tags.get(tracking.TRAIN_RUN_TAG, ""), _version_tag_evaluation(v.tags)) == key
    )
    first = str(same[0]) if same else mine
    if first != mine:
        _retrying(client.delete_model_version, name, mine)
    return first


def _ensure_model(client, name: str, base_slug: str) -> None:
    """Create the registered model with its description (MLflow would create it bare on first register)."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        client.create_registered_model(
            name,
            description=(
                f"LoRA adapters of base model `{base_slug}` for Japanese medical exam questions, trained and "
                f"evaluated by jmed. The `{CHAMPION}` alias is the best version on the ranking evaluation (tag "
                f"`{EVALUATION_TAG}`); `{PREVIOUS}` is the one it replaced. Change the ranking evaluation with "
                f"`jmed promote --base-model {base_slug} --evaluation <eval run id or data>`."
            ),
        )


def _note_promotion(client, name: str, version: str, d: Decision, metric: str) -> None:
    """A promoted version's description says which version it replaced and by how much."""
    if d.champion is None:
        note = "Promoted to champion: the first one of this model."
    elif d.champion.metric is None or d.candidate is None:
        note = f"Promoted to champion, replacing v{d.champion.version} (which had no {metric})."
    else:
        note = (
            f"Promoted to champion, replacing v{d.champion.version}: {metric} {d.candidate.metric:.6g} vs "
            f"{d.champion.metric:.6g} ({d.candidate.metric - d.champion.metric:+.6g}) on "
            f"{describe_evaluation(d.candidate.evaluation, d.candidate.data)}."
        )
    old = _retrying(client.get_model_version, name, version).description or ""
    _retrying(client.update_model_version, name, version, f"{old}\n\n{time.strftime('%Y-%m-%d')}: {note}".strip())


def promote_one(
    client,
    base_slug: str,
    metric: str = "eval/accuracy",
    min_delta: float = 0.0,
    eval_runs: list[str] | None = None,
    bundle_base: bool | None = None,
) -> dict:
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
    record.update(
        base_model=base_slug,
        registered_model=name,
        version=version,
        lock=how,
        champion_version=final.version if final else None,
    )
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
            raise ValueError(
                f"--evaluation {ref}: run is a {run.data.tags.get(tracking.STEP_TAG, 'non-jmed')} run, "
                "not an evaluate run"
            )
        cfg, path = from_flat(EvalConfig, run.data.params), run.data.params.get("eval_data_path", "")
        evaluation, defined_by = _evaluation(run.data.params), ref
    else:
        if current is None:
            raise ValueError(
                f"--evaluation {ref}: {name} has no champion whose settings could evaluate that data; "
                f"evaluate an adapter on it (jmed evaluate --eval-data {ref} …) and pass that run id"
            )
        cfg = dataclasses.replace(from_flat(EvalConfig, client.get_run(current.eval_run).data.params), eval_data=ref)
        path, questions = load_eval_questions(cfg)
        evaluation = _evaluation({**flat(cfg), "eval_data_digest": D.digest(questions)})
        defined_by = ""
    if current is not None:
        there = [
            c
            for c in candidates(client, base_slug, metric, [])
            if c.train_run == current.train_run and c.evaluation == evaluation
        ]
        if there:
            print(f"[jmed] champion v{current.version} was already evaluated there: eval run {there[0].eval_run}")
            defined_by = defined_by or there[0].eval_run
        else:
            print(f"[jmed] evaluating champion v{current.version} (train run {current.train_run}) on {path}")
            cfg = dataclasses.replace(cfg, adapter=f"runs:/{current.train_run}/adapter", compare_base=False)
            with mlflow.start_run(
                nested=mlflow.active_run() is not None, run_name=f"evaluate-champion-v{current.version}"
            ):
                there_run = evaluate(cfg)
            defined_by = defined_by or there_run
    declare_evaluation(client, name, evaluation, path, defined_by)
    return evaluation


def promote(
    base_model: str = "",
    metric: str = "eval/accuracy",
    min_delta: float = 0.0,
    eval_runs: list[str] | None = None,
    bundle_base: bool | None = None,
    evaluation: str = "",
) -> list[dict]:
    """`jmed promote`: one decision per base model (or the one given), logged in a `jmed.step=promote` run.
    `evaluation` (an eval run id or data): first switch the ranking evaluation (`switch_evaluation`)."""
    import mlflow
    from mlflow import MlflowClient

    from jmed.console import say
    from jmed.tracking import log_params, slug, step_run

    with step_run("promote", run_name="promote"):
        client = MlflowClient()
        log_params(
            {
                "base_model": base_model,
                "metric": metric,
                "min_delta": min_delta,
                "eval_runs": ",".join(eval_runs or []),
                "evaluation": evaluation,
            }
        )
        evaluated = sorted({r.data.tags.get(tracking.BASE_TAG, "") for r in evaluate_runs(client)} - {""})
        slugs = [slug(base_model)] if base_model else evaluated
        if base_model and slug(base_model) not in evaluated:  # a typo must not look like "nothing to do"
            raise ValueError(
                f"no evaluated adapter of base model {base_model!r} in {tracking.shown_uri()}"
                + (f"; evaluated base models: {', '.join(evaluated)}" if evaluated else "")
            )
        if evaluation:
            if len(slugs) != 1:
                raise ValueError(
                    "--evaluation needs one base model: pass --base-model"
                    + (f" (evaluated: {', '.join(slugs)})" if slugs else "")
                )
            ranked = switch_evaluation(client, slugs[0], evaluation, metric)
            data = next((c.data for c in candidates(client, slugs[0], metric, []) if c.evaluation == ranked), "")
            say(f"[jmed] {model_name(slugs[0])} is now ranked on {describe_evaluation(ranked, data)}")
        records = []
        for s in slugs:
            rec = promote_one(client, s, metric, min_delta, eval_runs, bundle_base)
            records.append(rec)
            mlflow.set_tags(
                {
                    f"jmed.decision.{s}": rec["action"],
                    f"jmed.champion.{s}": str(rec["champion_version"] or ""),
                    f"jmed.reasons.{s}": " | ".join(rec["reasons"])[:5000],
                }
            )
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
