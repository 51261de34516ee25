"""Reproduce a registered version: same data (digest checked), same resolved config and seed, retrain,
re-evaluate, and report whether adapter bytes and metrics match.

Exact on CPU. On CUDA, kernels are not bitwise deterministic, so metrics must agree within
`GPU_TOLERANCE` and differing adapter bytes are reported but not a failure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from jmed import adapter, tracking

GPU_TOLERANCE = 0.02  # absolute, on eval/* fractions


class ReproduceError(RuntimeError):
    pass


@dataclass
class Report:
    model_uri: str
    train_run: str
    eval_run: str
    new_train_run: str = ""
    new_eval_run: str = ""
    device: str = "cpu"
    adapter_sha256: str = ""
    new_adapter_sha256: str = ""
    metrics: dict = field(default_factory=dict)  # name -> [logged, reproduced]
    problems: list[str] = field(default_factory=list)

    @property
    def adapter_match(self) -> bool:
        return self.adapter_sha256 == self.new_adapter_sha256

    @property
    def match(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**self.__dict__, "adapter_match": self.adapter_match, "match": self.match}


def resolve_version(model_uri: str):
    """models:/name/3 or models:/name@alias -> ModelVersion."""
    from mlflow.tracking import MlflowClient

    if not model_uri.startswith("models:/"):
        raise ReproduceError(f"expected a registered model URI models:/<name>@<alias> or /<version>, got {model_uri!r}")
    ref = model_uri[len("models:/") :]
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = ref.rpartition("/")
    return client.get_model_version(name, version)


def adapter_sha256(run_id: str) -> tuple[str, dict]:
    """sha256 of a train run's adapter weights, and its jmed.json."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter"))
    sha = hashlib.sha256((local / "adapter_model.safetensors").read_bytes()).hexdigest()
    return sha, adapter.read(local)


def reproduce(model_uri: str, engine: str = "") -> Report:
    """`engine`: evaluate with this engine instead of the logged one (its metrics may then differ: the
    vllm engine runs bfloat16)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from jmed import config, data, evaluate, pipeline, train
    from jmed.models import resolve_precision

    tracking.setup()
    client = MlflowClient()
    version = resolve_version(model_uri)
    train_run, eval_run = version.tags.get(tracking.TRAIN_RUN_TAG), version.tags.get(tracking.EVAL_RUN_TAG)
    if not train_run or not eval_run:
        raise ReproduceError(f"{model_uri} has no jmed.train_run/jmed.eval_run lineage tags")
    report = Report(model_uri, train_run, eval_run)
    report.adapter_sha256, meta = adapter_sha256(train_run)
    train_cfg = config.from_flat(config.TrainConfig, meta["config"])
    # The adapter's jmed.json is data from a shared store: it may not switch on what only a user may.
    refused = [k for k in train.TRUSTED_ONLY if getattr(train_cfg, k) != getattr(config.TrainConfig(), k)]
    if refused:
        raise ReproduceError(
            f"{model_uri}: its adapter's jmed.json sets {', '.join(f'{k}={getattr(train_cfg, k)}' for k in refused)};"
            f" reproduce never takes security-relevant settings from the store. Retrain it with `jmed train` "
            f"and the option given on your own command line"
        )
    train_cfg = replace(train_cfg, resume_from=None, stop_after=0)
    print(
        f"[jmed] reproduce takes from the store: the training config of {train_run} (adapter jmed.json: "
        f"{', '.join(f'{k}={v}' for k, v in sorted(config.flat(train_cfg).items()))}) and the evaluation "
        f"config of {eval_run}; never {', '.join(train.TRUSTED_ONLY)}"
    )

    # The training data must be the data that was used: a changed file is a failure, named.
    path = train_cfg.train_data or str(data.SAMPLE_TRAIN)
    now = data.digest(data.load_training_items(path, train_cfg.data_format))
    if now != meta["train_data_digest"]:
        raise ReproduceError(
            f"training data changed: {path} has digest {now[:16]}…, the version was trained on "
            f"{meta['train_data_digest'][:16]}…; restore the original file to reproduce"
        )

    eval_params = client.get_run(eval_run).data.params
    eval_cfg = config.from_flat(config.EvalConfig, eval_params)
    if engine and engine != eval_cfg.engine:
        eval_cfg = replace(eval_cfg, engine=engine, engine_url="")
    report.device = resolve_precision(train_cfg.precision)[0]

    with tracking.step_run("reproduce", tags={"jmed.reproduce.of": model_uri}):
        tracking.log_params({"model_uri": model_uri, "train_run": train_run, "eval_run": eval_run})
        ledger = pipeline.Ledger()
        report.new_train_run = pipeline.run_step(ledger, "train", None, lambda: train.train(train_cfg)).run_id
        report.new_adapter_sha256, _ = adapter_sha256(report.new_train_run)
        eval_cfg = replace(eval_cfg, adapter=report.new_train_run, compare_base=False)
        report.new_eval_run = pipeline.run_step(ledger, "evaluate", None, lambda: evaluate.evaluate(eval_cfg)).run_id

        logged = client.get_run(eval_run).data.metrics
        fresh = client.get_run(report.new_eval_run).data.metrics
        tol = 0.0 if report.device == "cpu" else GPU_TOLERANCE
        for name in sorted(logged):
            if (
                not name.startswith("eval/") or "/delta/" in name or name.endswith(("questions_per_s", "load_s"))
            ):  # timings, not results
                continue
            old, new = logged[name], fresh.get(name)
            report.metrics[name] = [old, new]
            if new is None or abs(old - new) > tol:
                report.problems.append(f"{name}: logged {old}, reproduced {new} (tolerance {tol})")
        if not report.adapter_match:
            msg = f"adapter bytes differ: {report.adapter_sha256[:16]}… vs {report.new_adapter_sha256[:16]}…"
            if report.device == "cpu":
                report.problems.append(msg)
            else:
                print(f"[jmed] {msg} (expected on {report.device}; metrics decide)")
        mlflow.log_dict(report.to_dict(), "reproduce_report.json")
        mlflow.set_tag("jmed.reproduce.match", str(report.match).lower())
        mlflow.log_metric("reproduce/match", float(report.match))
    return report
