"""Pipelines: `main` (validate → train → evaluate base and adapter → promote) and `study` (the papers' grid).

Every step is a child run of one parent run (tag `jmed.step=pipeline` or `study`). A step whose
identical inputs — its resolved parameters, the digests of its data and the code version — already
finished in this tracking store is reused, not run again (tag `jmed.step_key`); `force` reruns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from jmed import tracking
from jmed.config import EvalConfig, TrainConfig, flat
from jmed.prompts import protocol_for

STEP_KEY_TAG = "jmed.step_key"


class PipelineFailed(RuntimeError):
    pass


@dataclass
class StepResult:
    step: str
    run_id: str
    reused: bool


@dataclass
class Ledger:
    """What the parent run records: every step's run id and whether it was reused."""

    steps: list[StepResult] = field(default_factory=list)
    total: int = 0  # steps planned, for the headers ("step 2/5")

    def add(self, result: StepResult) -> StepResult:
        self.steps.append(result)
        return result

    def header(self, step: str, what: str) -> None:
        from jmed.console import say

        n = len(self.steps) + 1
        say(f"\n[jmed] ── step {n}/{self.total or n} {step}: {what}")

    @property
    def reused(self) -> list[str]:
        return [f"{s.step}:{s.run_id}" for s in self.steps if s.reused]

    def log(self) -> None:
        import mlflow

        mlflow.log_dict([s.__dict__ for s in self.steps], "pipeline_steps.json")
        mlflow.set_tags(
            {
                "jmed.steps_run": ",".join(s.step for s in self.steps if not s.reused),
                "jmed.steps_reused": ",".join(s.step for s in self.steps if s.reused),
            }
        )
        mlflow.log_metrics(
            {"pipeline/steps": len(self.steps), "pipeline/steps_reused": sum(s.reused for s in self.steps)}
        )


def step_key(step: str, params: dict, digests: dict) -> str:
    payload = {
        "step": step,
        "params": {k: str(v) for k, v in params.items()},
        "digests": digests,
        "code": tracking.code_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def find_finished(key: str) -> str | None:
    """The newest FINISHED run with this step key in any experiment of the store, if one exists."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        exps,
        f"tags.`{STEP_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def run_step(
    ledger: Ledger, step: str, key: str | None, fn, force: bool = False, run_name: str | None = None
) -> StepResult:
    """Run `fn()` in a child run of the active run, or reuse a finished run with the same key
    (`key=None`: always run, e.g. `reproduce`, whose point is to run again).

    `fn` is a jmed step function (train, evaluate, …): it attaches to the active child run.
    """
    import mlflow

    if key and not force:
        found = find_finished(key)
        if found:
            ledger.header(step, f"reused finished run {found} (same inputs; --force true reruns it)")
            return ledger.add(StepResult(step, found, True))
    ledger.header(step, "running")
    child = mlflow.start_run(nested=True, run_name=run_name or step, tags={STEP_KEY_TAG: key} if key else None)
    child_id = child.info.run_id
    try:
        fn()
    except BaseException as exc:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == child_id:  # the step did not end it itself
            tracking.end(child_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    active = mlflow.active_run()
    if active is not None and active.info.run_id == child_id:
        tracking.end(child_id, "FINISHED")
    return ledger.add(StepResult(step, child_id, False))


def _digest_of(path: str, default, strict: bool = True) -> str:
    """Content digest of a dataset; `strict=False` also digests invalid data (validation reports it)."""
    from jmed import data

    path = str(path or default)
    if strict:
        return data.digest(data.load_training_items(path))
    ds = data.read_dataset(path)
    return data.digest(ds.items) + f"+{len(ds.errors)}-errors" if ds.errors else data.digest(ds.items)


def validate_step(
    ledger: Ledger,
    train_data: str,
    eval_data: str,
    force: bool,
    train_filters=None,
    eval_filters=None,
    leakage: str = "",
) -> None:
    """Stop the pipeline before training when the data is invalid; the report goes to the parent.
    Repeated ids and leakage are checked between the questions the steps use (after their filters);
    `leakage` is the policy for near-duplicates (jmed.leakage: warn goes on, fail stops)."""
    import mlflow

    from jmed import checks, data
    from jmed.leakage import DEFAULT_LEAKAGE

    leakage = leakage or DEFAULT_LEAKAGE
    train_path = train_data or str(data.SAMPLE_TRAIN)
    eval_path = eval_data or str(data.SAMPLE_TEST)
    used = {
        f"{name}.{k}": v
        for name, f in (("filters", train_filters), ("eval_filters", eval_filters))
        if f
        for k, v in flat(f).items()
    }
    key = step_key(
        "validate",
        {"data": train_path, "against": eval_path, "leakage": leakage, **used},
        {
            "train": _digest_of(train_path, data.SAMPLE_TRAIN, strict=False),
            "eval": _digest_of(eval_path, data.SAMPLE_TEST, strict=False),
        },
    )
    holder = {}

    def fn():
        with tracking.step_run("validate"):
            report = holder["report"] = checks.validate(
                [train_path], against=[eval_path], filters=train_filters, against_filters=eval_filters, leakage=leakage
            )
            checks.log_report(report)
            from jmed.console import say

            say(f"[jmed] validate: {report.summary()}")
            if not report.success:
                raise PipelineFailed(f"validation failed, pipeline stopped before training:\n{report.summary()}")

    try:
        run_step(ledger, "validate", key, fn, force)
    except PipelineFailed:
        mlflow.log_dict(holder["report"].to_dict(), "validation_report.json")  # on the parent run
        raise


def train_step(ledger: Ledger, cfg: TrainConfig, force: bool) -> str:
    from jmed import data, train

    digest = _digest_of(cfg.train_data, data.SAMPLE_TRAIN)
    key = step_key("train", flat(cfg), {"train": digest})
    return run_step(ledger, "train", key, lambda: train.train(cfg), force).run_id


def evaluate_step(ledger: Ledger, cfg: EvalConfig, force: bool, name: str) -> str:
    from jmed import data, evaluate

    digest = _digest_of(cfg.eval_data, data.SAMPLE_TEST)
    key = step_key("evaluate", flat(cfg), {"eval": digest})
    return run_step(ledger, name, key, lambda: evaluate.evaluate(cfg), force, run_name=name).run_id


def promotion_state_key(base_model: str) -> str:
    """Promotion's inputs are the registry's state: the finished adapter evaluations and the champion."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from jmed import registry

    client = MlflowClient()
    base = tracking.slug(base_model)
    runs = sorted(r.info.run_id for r in registry.evaluate_runs(client, base))
    try:
        champion = client.get_model_version_by_alias(registry.model_name(base), registry.CHAMPION).version
    except MlflowException:
        champion = ""
    return step_key("promote", {"base_model": base}, {"evaluate_runs": ",".join(runs), "champion": champion})


def promote_step(ledger: Ledger, base_model: str, force: bool) -> None:
    """Reused when a promotion already ran on the same state; promotion is idempotent, so the run is
    keyed by the state it left behind (a rerun on that state would change nothing)."""
    from mlflow.tracking import MlflowClient

    from jmed import registry

    result = run_step(
        ledger, "promote", promotion_state_key(base_model), lambda: registry.promote(base_model=base_model), force
    )
    if not result.reused:
        MlflowClient().set_tag(result.run_id, STEP_KEY_TAG, promotion_state_key(base_model))


def adapter_uri(train_run: str) -> str:
    """Steps hand each other artifact URIs: a train run's adapter as evaluate reads it."""
    return f"runs:/{train_run}/adapter"


def eval_config_for(
    train_cfg: TrainConfig,
    eval_data: str,
    protocol: str,
    shots: int | None = None,
    adapter: str = "",
    settings: dict | None = None,
) -> EvalConfig:
    """The evaluation that matches a training config. The kind-of-question filters (text-only,
    five-choices, scored-only) and excluded ids carry over; years/blocks/ids select training questions only, so the
    evaluation's own come from `settings` (years, blocks, ids, limit, sample, max_new_tokens, batch_size)."""
    from jmed.config import DataFilter, build

    settings = dict(settings or {})
    f = train_cfg.filters
    filters = build(
        DataFilter,
        {
            "text_only": f.text_only,
            "five_choices": f.five_choices,
            "scored_only": f.scored_only,
            "exclude_ids": f.exclude_ids,
            **{k: settings.pop(k) for k in ("years", "blocks", "ids") if k in settings},
        },
    )
    if protocol:  # before any step runs, not after training
        from jmed.prompts import check_protocol

        check_protocol(train_cfg.prompt_format, protocol)
    return build(
        EvalConfig,
        {
            "model": train_cfg.model,
            "adapter": adapter,
            "eval_data": eval_data,
            "protocol": protocol or protocol_for(train_cfg.prompt_format),
            "prompt_format": train_cfg.prompt_format,
            "shots": train_cfg.shots if shots is None else shots,
            # the vllm engine runs the base in bfloat16 with a QLoRA adapter merged in (jmed.evaluate._resolve)
            "quantization": "none" if settings.get("engine") == "vllm" else train_cfg.quantization,
            "seed": train_cfg.seed,
            "filters": filters,
            **settings,
        },
    )


def main_pipeline(
    train_cfg: TrainConfig,
    eval_data: str = "",
    protocol: str = "",
    force: bool = False,
    eval_settings: dict | None = None,
    leakage: str = "",
) -> str:
    """validate → train → evaluate (base, adapter) → promote. Returns the parent run id.
    `eval_settings`: EvalConfig overrides (see `eval_config_for`); `leakage`: validate's policy."""
    from jmed.leakage import DEFAULT_LEAKAGE

    leakage = leakage or DEFAULT_LEAKAGE
    import mlflow

    ledger = Ledger(total=5)
    name = f"pipeline-{tracking.slug(train_cfg.model)}-{train_cfg.prompt_format}"
    with tracking.step_run("pipeline", run_name=name) as parent:
        mlflow.set_tag("mlflow.runName", name)  # also under `mlflow run`, whose run already has a random name
        base_cfg = eval_config_for(train_cfg, eval_data, protocol, settings=eval_settings)
        tracking.log_params(
            {f"pipeline.{k}": v for k, v in flat(train_cfg).items()}
            | {f"pipeline.eval.{k}": v for k, v in flat(base_cfg).items()}
            | {
                "pipeline.eval_data": eval_data,
                "pipeline.protocol": protocol,
                "pipeline.force": force,
                "pipeline.leakage": leakage,
            }
        )
        try:
            validate_step(ledger, train_cfg.train_data, eval_data, force, train_cfg.filters, base_cfg.filters, leakage)
            train_run = train_step(ledger, train_cfg, force)
            base_run = evaluate_step(ledger, base_cfg, force, "evaluate-base")
            adapter_cfg = replace(base_cfg, adapter=adapter_uri(train_run))
            eval_run = evaluate_step(ledger, adapter_cfg, force, "evaluate-adapter")
            promote_step(ledger, train_cfg.model, force)
            champion = champion_step(ledger, train_cfg.model, adapter_cfg, train_run, eval_run, force)
        finally:
            ledger.log()
        results = outcome(train_cfg.model, base_run, eval_run, train_run, champion)
        mlflow.set_tags(
            {
                tracking.TRAIN_RUN_TAG: train_run,
                tracking.EVAL_RUN_TAG: eval_run,
                "jmed.adapter_uri": adapter_uri(train_run),
                "jmed.model_uri": f"models:/jmed-{tracking.slug(train_cfg.model)}@champion",
                "mlflow.note.content": describe(train_cfg, eval_data, ledger, results),
            }
        )
        from jmed.console import say

        say("\n" + final_table(train_cfg, results, parent.info.run_id, ledger))
        return parent.info.run_id


def champion_step(ledger: Ledger, model: str, adapter_cfg: EvalConfig, train_run: str, eval_run: str, force: bool):
    """The champion as measured on this pipeline's evaluation: (its version or None, its eval run there).
    Its adapter is this pipeline's own (the adapter row's run), or was evaluated there before, or is
    evaluated now (a reusable step, `evaluate-champion`), so the table compares like with like."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from jmed import registry

    client = MlflowClient()
    name = registry.model_name(tracking.slug(model))
    try:
        version = client.get_model_version_by_alias(name, registry.CHAMPION)
    except MlflowException:
        return None, ""
    champ_train = version.tags.get(tracking.TRAIN_RUN_TAG, "")
    if champ_train == train_run:
        return version, eval_run
    here = registry._evaluation(client.get_run(eval_run).data.params)
    there = [
        c
        for c in registry.candidates(client, tracking.slug(model), "eval/accuracy", [])
        if c.train_run == champ_train and c.evaluation == here
    ]
    if there:
        return version, max(there, key=lambda c: (c.start_time, c.eval_run)).eval_run
    ledger.total += 1
    cfg = replace(adapter_cfg, adapter=adapter_uri(champ_train), compare_base=False)
    return version, evaluate_step(ledger, cfg, force, "evaluate-champion")


def outcome(model: str, base_run: str, eval_run: str, train_run: str, champion=(None, "")) -> list[dict]:
    """Rows of the pipeline's final table: the base model, this adapter and the champion on this
    pipeline's evaluation, then the champion as it was ranked when that evaluation is another. Each
    row carries its evaluation (jmed.registry's like-for-like key) and its readable label."""
    from mlflow.tracking import MlflowClient

    from jmed import registry
    from jmed.identity import evaluation_label

    client = MlflowClient()
    version, champ_run = champion
    name = registry.model_name(tracking.slug(model))
    rows = [{"what": "base model", "run": base_run}, {"what": "adapter (this pipeline)", "run": eval_run}]
    if version is None:
        rows.append({"what": f"champion {name}: none", "run": ""})
    else:
        champ_train = version.tags.get(tracking.TRAIN_RUN_TAG, "")
        common = {"version": version.version, "name": name, "train_run": champ_train, "this": champ_train == train_run}
        rows.append({"what": f"champion {name} v{version.version}", "run": champ_run, **common})
        ranked = version.tags.get(tracking.EVAL_RUN_TAG, "")
        if ranked and ranked != champ_run:
            rows.append({"what": f"champion v{version.version}, as ranked", "run": ranked, **common, "ranked": True})
    for row in rows:
        run = client.get_run(row["run"]) if row["run"] else None
        m, params = (run.data.metrics, run.data.params) if run else ({}, {})
        row.update(
            accuracy=m.get("eval/accuracy"),
            score=m.get("eval/score"),
            unparsed=m.get("eval/unparsed"),
            questions=m.get("eval/questions"),
            passed=[v for k, v in sorted(m.items()) if k.count("/") == 2 and k.endswith("/passed")],
            evaluation=registry._evaluation(params) if run else None,
            label=evaluation_label(params) if run else "",
        )
    return rows


def final_table(cfg: TrainConfig, rows: list[dict], parent: str, ledger: Ledger) -> str:
    """The rows with a marker per evaluation (A: this pipeline's), the evaluations spelled out under
    the table, and who the champion is: rows on different evaluations never share a column unmarked."""
    from jmed.console import pct, table

    def verdict(passed):
        return "n/a" if not passed else "/".join("PASS" if p else "FAIL" for p in passed)

    marks: dict[tuple, str] = {}
    for r in rows:
        if r["evaluation"] is not None and r["evaluation"] not in marks:
            marks[r["evaluation"]] = "ABCDEFGH"[len(marks)]
    body = [
        [
            r["what"],
            r["run"][:12],
            marks.get(r["evaluation"], ""),
            pct(r["accuracy"]),
            pct(r["score"]),
            "" if r["unparsed"] is None else int(r["unparsed"]),
            verdict(r["passed"]),
        ]
        for r in rows
    ]
    labels = {marks[r["evaluation"]]: r["label"] for r in rows if r["evaluation"] is not None}
    lines = [
        f"[jmed] pipeline {cfg.model} ({cfg.prompt_format}) finished: parent run {parent}",
        table(["model", "eval run", "on", "accuracy", "exam score", "unparsed", "pass"], body),
        *(f"  {mark}: {label}" for mark, label in sorted(labels.items())),
    ]
    if len(labels) > 1:
        lines.append("  rows marked differently were measured on different evaluations: compare within one letter")
    champ = next((r for r in rows if r["what"].startswith("champion")), {})
    if champ.get("version"):
        whose = "this pipeline's own adapter" if champ["this"] else "an earlier adapter"
        reused = any(s.step == "train" and s.reused for s in ledger.steps)
        lines.append(
            f"  champion: {whose}, train run {champ['train_run'][:12]}"
            + (" (reused)" if champ["this"] and reused else "")
            + f" (models:/{champ['name']}@champion)"
        )
    else:
        lines.append("  champion: none")
    reused = [s.step for s in ledger.steps if s.reused]
    lines.append(f"  reused steps: {', '.join(reused) or 'none'}")
    return "\n".join(lines)


def describe(cfg: TrainConfig, eval_data: str, ledger: Ledger, rows: list[dict]) -> str:
    """The parent run's description in the MLflow UI: what ran, on what data, and the result."""
    from jmed import data
    from jmed.console import pct

    base, tuned, champ = rows[:3]  # a 4th row is the champion as ranked elsewhere
    steps = ", ".join(f"{s.step}{' (reused)' if s.reused else ''}" for s in ledger.steps)
    # the MLflow UI routes model versions at #/models/<name>/versions/<n>: the description links there
    link = (
        f"[{champ['name']} v{champ['version']}](#/models/{champ['name']}/versions/{champ['version']})"
        if champ.get("version")
        else "none"
    )
    return (
        f"Pipeline for `{cfg.model}`, prompt format `{cfg.prompt_format}`: trained on "
        f"`{cfg.train_data or data.SAMPLE_TRAIN.name}`, evaluated on `{eval_data or data.SAMPLE_TEST.name}` "
        f"({tuned['label']}).\n\n"
        f"Accuracy: base {pct(base['accuracy'])}, adapter {pct(tuned['accuracy'])}. Champion: "
        f"{link}{' (this adapter)' if champ.get('this') else ''}.\n\nSteps: {steps}."
    )
