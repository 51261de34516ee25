"""The adapter card: the one owner of an adapter's `jmed.json` (what base, prompt format, shots and
protocol it was trained for, from which run and data) and of resolving an adapter reference.

    resolve("3f2a…" | "runs:/<id>/adapter" | "models:/jmed-tiny@champion" | "/path") -> local folder
    read(folder) -> dict        write(folder, card)        prompt_format(card), protocol(card)

Every module that needs an adapter's metadata asks here. A card is data read from a shared store:
it is type-checked when read and never switches on a setting only the user may (see train.TRUSTED_ONLY).
Light on purpose (json, yaml): the served model imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

CARD = "jmed.json"
# field -> type of the values a card may hold (anything else is an error, not ignored)
FIELDS = {
    "model": str,
    "base_revision": str,
    "prompt_format": str,
    "shots": int,
    "protocol": str,
    "train_run_id": str,
    "train_data_digest": str,
    "tokenizer_hash": str,
    "lora_targets": (list, str),
    "jmed_version": str,
    "config": dict,
}


def write(folder, card: dict) -> Path:
    path = Path(folder) / CARD
    path.write_text(json.dumps(card, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def read(folder) -> dict:
    """The card of an adapter folder ({} for an adapter without one, e.g. trained elsewhere)."""
    path = Path(folder) / CARD
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable adapter card: {str(exc)[:200]}") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key, typ in FIELDS.items():
        if key in card and not isinstance(card[key], typ):
            raise ValueError(
                f"{path}: {key}: expected {getattr(typ, '__name__', 'list or str')}, got {type(card[key]).__name__}"
            )
    return card


def prompt_format(card: dict, override: str = "") -> str:
    """The format to render with: an explicit choice, else the adapter's own, else igakuqa."""
    return override or card.get("prompt_format") or "igakuqa"


def protocol(card: dict) -> str:
    """The protocol the adapter answers in (letters for letter formats, choice text otherwise)."""
    from jmed.prompts import protocol_for

    return card.get("protocol") or protocol_for(prompt_format(card))


def digest(folder) -> str:
    """sha256 over an adapter folder's files (relative names and bytes, sorted): what a registered
    version's tag records and what a server checks before it loads a downloaded copy."""
    import hashlib
    from pathlib import Path

    root = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


DIGEST_TAG = "jmed.adapter_sha256"  # on a registered version: its adapter folder's `digest` when registered


def check_digest(folder, recorded: str, what: str) -> None:
    """ValueError naming `what` when the folder's files are not the ones whose digest was recorded."""
    got = digest(folder)
    if recorded and got != recorded:
        raise ValueError(
            f"{what}: the downloaded adapter's sha256 {got[:16]}… differs from the one registered "
            f"({recorded[:16]}…); the artifact was changed after registration, and is not served"
        )


def resolve(ref: str):
    """A local adapter folder from a train run id, `runs:/<id>[/path]`, `models:/<name>/<version|@alias>`
    (a registered pyfunc model with an `adapter` artifact), or a local folder."""
    import re
    from pathlib import Path

    ref = (ref or "").strip()
    if not ref:
        raise ValueError("no adapter reference given")
    local = Path(ref).expanduser()
    if local.is_dir():
        return _adapter_dir(local, ref)
    from jmed import tracking

    mlflow = tracking.setup()
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        ref = f"runs:/{ref}/adapter"
    if ref.startswith("runs:/"):
        if ref.rstrip("/").count("/") == 1:  # runs:/<id> alone
            ref = ref.rstrip("/") + "/adapter"
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
        except Exception as exc:  # noqa: BLE001 - re-raised with the reference named
            raise ValueError(
                f"adapter {ref}: cannot download it from {tracking.shown_uri()}: {tracking.masked(exc)}"
            ) from exc
        return _adapter_dir(path, ref)
    if ref.startswith("models:/"):
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"adapter {ref}: cannot download the registered model: {exc}") from exc
        return _adapter_dir(_pyfunc_artifact(path, "adapter", ref), ref)
    raise ValueError(
        f"adapter {ref!r}: expected a train run id, runs:/<id>/adapter, models:/<name>/<version "
        "or @alias>, or a local adapter folder"
    )


def _pyfunc_artifact(model_dir, name: str, ref: str):
    import yaml

    mlmodel = model_dir / "MLmodel"
    if mlmodel.exists():
        spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        arts = (spec.get("flavors", {}).get("python_function", {}) or {}).get("artifacts", {}) or {}
        if name in arts:
            return inside(model_dir, (arts[name] or {}).get("path", ""), f"adapter {ref}: MLmodel artifact {name!r}")
    for cand in (model_dir / "artifacts" / name, model_dir / name):
        if cand.is_dir():
            return cand
    raise ValueError(f"adapter {ref}: the model has no {name!r} artifact (looked in {model_dir})")


def inside(root, relative, what: str):
    """`root / relative`, resolved, refused unless it stays inside `root`: a path read from an artifact
    (another user's MLmodel file) must not point anywhere else on this machine."""
    from pathlib import Path

    root = Path(root).resolve()
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise ValueError(f"{what}: path {str(relative)[:200]!r} is not a relative path inside the artifact")
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{what}: path {relative[:200]!r} leaves the artifact folder {root}")
    return target


def _adapter_dir(path, ref: str):
    if not (path / "adapter_config.json").exists() and (path / "adapter" / "adapter_config.json").exists():
        path = path / "adapter"
    if not (path / "adapter_config.json").exists():
        raise ValueError(f"adapter {ref}: {path} holds no adapter_config.json")
    return path
