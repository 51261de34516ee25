"""The training checkpoint format: the adapter (safetensors), optimiser, scheduler and RNG state as
safetensors plus JSON (nothing pickled, nothing unpickled), the data position and the resolved config;
found in a run's artifacts only when complete (CHECKPOINT_COMPLETE is uploaded last)."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

from jmed.config import TrainConfig, flat

log = logging.getLogger("jmed.train")


class TrainError(ValueError):
    """Bad training input: a clear message, and the run ends FAILED."""


# Fields that may differ between an interrupted run and its resumption.
RESUME_FREE = ("resume_from", "stop_after", "checkpoint_every")


# Settings that only the user of the current step may switch on: never taken from a checkpoint, an
# adapter or a registered version (they are read from a shared store; `reproduce` refuses them).
TRUSTED_ONLY = ("trust_remote_code",)


STATE_TENSORS, STATE_JSON = "state.safetensors", "state.json"  # a checkpoint's optimiser/scheduler/RNG


PICKLED_STATE = ("optimizer.pt", "scheduler.pt", "rng.pt")  # jmed 0.1's pickles: never loaded


def _split_state(value, prefix: str, tensors: dict):
    """A nested state (dicts, lists, numbers, tensors) as JSON, with every tensor moved into `tensors`
    under a key the JSON names ({"__tensor__": key}); nothing is pickled."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {
            "__dict__": [
                [_split_state(k, f"{prefix}.k{i}", tensors), _split_state(v, f"{prefix}.{i}", tensors)]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    if isinstance(value, (list, tuple)):
        items = [_split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value).__module__ == "numpy":  # numpy arrays and scalars (the numpy RNG state)
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def _join_state(value, tensors: dict, where: str):
    """Inverse of `_split_state`; only JSON values and tensors of the safetensors file come back."""
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            if value["__tensor__"] not in tensors:
                raise TrainError(f"{where}: tensor {str(value['__tensor__'])[:80]!r} is missing")
            return tensors[value["__tensor__"]]
        if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
            return tuple(_join_state(v, tensors, where) for v in value["__tuple__"])
        if set(value) == {"__dict__"} and isinstance(value["__dict__"], list):
            out = {}
            for pair in value["__dict__"]:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise TrainError(f"{where}: malformed entry in the checkpoint state")
                key = _join_state(pair[0], tensors, where)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    raise TrainError(f"{where}: a dictionary key of type {type(key).__name__}")
                out[key] = _join_state(pair[1], tensors, where)
            return out
        raise TrainError(f"{where}: unexpected object {sorted(value)[:5]} in the checkpoint state")
    if isinstance(value, list):
        return [_join_state(v, tensors, where) for v in value]
    return value


ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's file name


def save_adapter(model, folder: Path, state_dict=None) -> None:
    """`model.save_pretrained`, with the adapter's weights taken from `state_dict`, the full state dict
    gathered under FSDP, when there is one. peft selects adapter keys by module name, and FSDP's nested
    units put `_fsdp_wrapped_module.` inside those names (peft strips a leading one only): it would find
    no key and write an empty adapter. So jmed picks the LoRA weights itself, named as peft names them
    (the adapter name dropped), and writes them as peft does."""
    from safetensors.torch import save_file

    model.save_pretrained(folder, save_embedding_layers=False, state_dict=state_dict)
    if state_dict is None:
        return
    name = model.active_adapter
    marker = f".{name}."
    weights = {
        k.replace(marker, ".", 1): v.contiguous()
        for k, v in state_dict.items()
        if marker in k and k.split(marker, 1)[0].rsplit(".", 1)[-1].startswith("lora_")
    }
    if not weights:
        raise TrainError(f"the gathered state dict holds no LoRA weights of adapter {name!r}")
    save_file(weights, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def save_checkpoint(
    folder: Path,
    model,
    optimizer,
    scheduler,
    step: int,
    position: int,
    cfg: TrainConfig,
    state_dict=None,
    optimizer_state=None,
):
    """Adapter (safetensors), optimiser/scheduler/RNG state (safetensors + JSON) and trainer_state.json.
    A checkpoint is read back from a shared store, so nothing in it is pickled: loading it runs no code.
    `state_dict` / `optimizer_state`: the full adapter and optimiser states gathered under FSDP."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    save_adapter(model, folder / "adapter", state_dict)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": list(np.random.get_state())}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    tensors: dict = {}
    layout = _split_state(
        {
            "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
            "scheduler": scheduler.state_dict(),
            "rng": rng,
        },
        "s",
        tensors,
    )
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps(layout), encoding="utf-8")
    state = {"step": step, "position": position, "config": flat(cfg)}
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=1, ensure_ascii=False), encoding="utf-8")


CHECKPOINT_DONE = "CHECKPOINT_COMPLETE"  # uploaded after every other file of a checkpoint


def _complete(client, run_id: str, path: str) -> bool:
    names = {e.path.rsplit("/", 1)[-1] for e in client.list_artifacts(run_id, path)}
    return CHECKPOINT_DONE in names


def latest_checkpoint(run_id: str) -> Path:
    """Download the newest complete checkpoint of a run. A checkpoint is complete when its marker file,
    uploaded after everything else, is there: a process killed while uploading leaves a checkpoint
    without one, which is skipped with a warning. A clear error when there is none."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        entries = client.list_artifacts(run_id, "checkpoints")
    except Exception as exc:  # unknown run id
        raise TrainError(f"resume_from={run_id}: cannot read that run's checkpoints ({exc})") from None
    steps = sorted((e.path for e in entries if e.is_dir), reverse=True)
    if not steps:
        raise TrainError(f"resume_from={run_id}: that run has no checkpoints (train with checkpoint_every > 0)")
    partial = []
    for path in steps:
        if _complete(client, run_id, path):
            if partial:
                log.warning(
                    "resume_from=%s: skipping incomplete checkpoint(s) %s (the run was killed while "
                    "writing them); resuming from %s",
                    run_id,
                    ", ".join(partial),
                    path,
                )
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))
        partial.append(path)
    raise TrainError(
        f"resume_from={run_id}: no complete checkpoint; {', '.join(reversed(partial))} were only "
        f"partly written (no {CHECKPOINT_DONE} marker)"
    )


def resumed_config(cfg: TrainConfig, state: dict) -> TrainConfig:
    """The interrupted run's resolved config, with this call's resume/stop/checkpoint fields."""
    from jmed.config import from_flat

    saved = from_flat(TrainConfig, state["config"])
    free, defaults = RESUME_FREE + TRUSTED_ONLY, TrainConfig()
    # An option given with --resume-from that contradicts the run being continued would be silently ignored:
    # refuse it (a value equal to the default cannot be told from "not given", and is not checked).
    clash = [
        f"{f.name}={getattr(cfg, f.name)!r} (the run has {getattr(saved, f.name)!r})"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in free
        and getattr(cfg, f.name) != getattr(defaults, f.name)
        and getattr(cfg, f.name) != getattr(saved, f.name)
    ]
    if clash:
        raise TrainError(
            f"--resume-from {cfg.resume_from} continues that run with its own settings; these options "
            f"differ from them: {', '.join(clash)}. Drop them, or start a new run without --resume-from"
        )
    return dataclasses.replace(saved, **{k: getattr(cfg, k) for k in free})


def load_checkpoint_adapter(folder: Path, model) -> tuple[int, int]:
    """Load the checkpoint's adapter weights; (step, data position)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(folder / "adapter" / ADAPTER_WEIGHTS))
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    return state["step"], state["position"]


def read_checkpoint_state(folder: Path) -> dict:
    """The optimiser, scheduler and RNG states of a checkpoint: safetensors and JSON only. A checkpoint
    with pickled state (jmed 0.1's *.pt files, or anything planted in a shared store) is refused
    before a byte of it is deserialised."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    pickled = [n for n in PICKLED_STATE if (folder / n).exists()]
    if pickled:
        raise TrainError(
            f"checkpoint {folder.name}: it holds pickled state ({', '.join(pickled)}), which jmed "
            f"never loads (unpickling runs code from the store); resume needs a checkpoint with "
            f"{STATE_TENSORS} and {STATE_JSON} (jmed >= 0.2), or train again"
        )
    if not (folder / STATE_JSON).is_file():
        raise TrainError(f"checkpoint {folder.name}: {STATE_JSON} is missing; not a jmed checkpoint")
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
        layout = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise TrainError(f"checkpoint {folder.name}: unreadable state ({str(exc)[:200]})") from None
    state = _join_state(layout, tensors, f"checkpoint {folder.name}")
    if not isinstance(state, dict) or {"optimizer", "scheduler", "rng"} - set(state):
        raise TrainError(f"checkpoint {folder.name}: state.json lacks optimizer, scheduler or rng")
    return state


def load_checkpoint_state(folder: Path, optimizer, scheduler, to_load=None) -> None:
    """Optimiser, scheduler and RNG states (RNG last: nothing may draw random numbers after it).
    `to_load`: maps the checkpoint's optimiser state to this process's (FSDP: its shard of the full state)."""
    import numpy as np
    import torch

    state = read_checkpoint_state(folder)
    try:
        optimizer.load_state_dict(state["optimizer"] if to_load is None else to_load(state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainError(f"checkpoint {folder.name}: state does not fit this run ({str(exc)[:200]})") from None
