"""Reading the registry and tracking store: evaluation runs, versions, candidates, the champion and the
declared ranking evaluation of a registered model."""

from __future__ import annotations

from jmed import tracking
from jmed.identity import evaluation_data
from jmed.registry.decision import CHAMPION, SECONDARY, Candidate, Champion
from jmed.registry.lease import _retrying


def model_name(base_slug: str) -> str:
    return f"jmed-{base_slug}"


EVAL_KEYS = ("eval_data_digest", "protocol", "prompt_format", "shots", "engine")


# runs and versions from before a key existed: what they were measured with
EVAL_KEY_DEFAULTS = {"engine": "hf"}


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
    by_key = {
        _version_key(v.tags.get(tracking.TRAIN_RUN_TAG, ""), _version_tag_evaluation(v.tags)): str(v.version)
        for v in known
    }
    out = []
    for r in evaluate_runs(client, base_slug):
        train_run = r.data.tags[tracking.ADAPTER_RUN_TAG]
        ev = _evaluation(r.data.params)
        out.append(
            Candidate(
                eval_run=r.info.run_id,
                train_run=train_run,
                evaluation=ev,
                metric=r.data.metrics.get(metric),
                secondary=r.data.metrics.get(SECONDARY.get(metric, "")),
                start_time=int(r.info.start_time or 0),
                version=by_key.get(_version_key(train_run, ev)),
                data=evaluation_data(r.data.params),
            )
        )
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
    return Champion(
        str(v.version), eval_run, v.tags.get(tracking.TRAIN_RUN_TAG, ""), _version_tag_evaluation(v.tags), value
    )


EVALUATION_TAG = (
    "jmed.evaluation"  # on the registered model: the ranking evaluation, JSON [digest, protocol, format, shots, engine]
)


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
    declared += [EVAL_KEY_DEFAULTS.get(k, "") for k in EVAL_KEYS[len(declared) :]]
    return tuple(declared)


def declare_evaluation(client, name: str, evaluation: tuple, data: str, eval_run: str) -> None:
    import json

    _retrying(client.set_registered_model_tag, name, EVALUATION_TAG, json.dumps(list(evaluation)))
    _retrying(client.set_registered_model_tag, name, EVALUATION_DATA_TAG, f"{data} (eval run {eval_run})")
