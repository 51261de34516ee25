"""The served model: jmed/serving.py logged as an MLflow pyfunc (code, nothing pickled), with its requirements,
signature and a clean copy of the jmed package as code_paths."""

from __future__ import annotations

from pathlib import Path

from jmed import adapter

SERVE_PACKAGES = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "peft",
    "accelerate",
    "pandas",
    "numpy",
)


SERVING_FILE = Path(__file__).parent.parent / "serving.py"


EXAMPLE = {
    "question": "急性虫垂炎で最も多くみられる初発症状はどれか。",
    "choices": ["心窩部痛", "右下腹部痛", "発熱", "下痢", "血便"],
    "n_answers": 1,
}


def pip_requirements(quantized: bool = False) -> list[str]:
    """Exact pins of what the served model imports, from the installed versions (never inferred)."""
    from importlib.metadata import version

    names = SERVE_PACKAGES + (("bitsandbytes",) if quantized else ())
    return [f"{n}=={version(n).split('+')[0]}" for n in names]


def signature(protocol: str):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from jmed.contract import DEFAULT_MAX_NEW_TOKENS, OLD_FIELD_ALIASES, OUTPUT_FIELDS

    OUTPUT_TYPES = {"n_answers": "long", "count_mismatch": "boolean"}

    # No input schema: MLflow would convert before the model sees the request (objects and nulls in
    # `choices` became strings, "1", 1.5 and true became n_answers, extra columns were dropped), so bad
    # input got 200. jmed.contract checks the raw rows instead, naming record and field (HTTP 400), and
    # accepts every request form MLflow documents (records, split, instances, columnar inputs).
    return ModelSignature(
        inputs=None,
        outputs=Schema(
            [ColSpec(OUTPUT_TYPES.get(name, "string"), name) for name in (*OUTPUT_FIELDS, *OLD_FIELD_ALIASES)]
        ),
        params=ParamSchema(
            [
                ParamSpec("protocol", "string", protocol),
                ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS),
                ParamSpec("version", "string", ""),
                ParamSpec("alias", "string", ""),
            ]
        ),
    )


def _code_copy(dest: Path) -> Path:
    """A clean copy of the jmed package (sources of every subpackage, e.g. readers/ and exams/, and presets;
    no caches, no sample data) for code_paths."""
    import shutil

    src = Path(__file__).parent.parent
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
            raise ValueError(
                f"base model folder {folder} has no *.safetensors weights; convert it first "
                "(served models carry weights as safetensors only)"
            )
        artifacts["base"] = str(folder)
    quant = str(meta.get("config", {}).get("quantization", "none"))
    config = {"base_model": base, "base_revision": revision, "bundled": bundle, "quantization": quant}
    protocol = adapter.protocol(meta)
    with tempfile.TemporaryDirectory() as tmp:
        # mlflow.models.Model.log is what pyfunc.log_model calls; it alone takes a run other than the active one
        return mlflow.models.Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(SERVING_FILE),
            artifacts=artifacts,
            model_config=config,
            code_paths=[str(_code_copy(Path(tmp)))],
            pip_requirements=pip_requirements(quant != "none"),
            signature=signature(protocol),
            input_example=(pd.DataFrame([EXAMPLE]), {"max_new_tokens": 4}),
        )
