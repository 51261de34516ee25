"""LoRA / QLoRA instruction tuning with a plain, readable loop, fully tracked in MLflow.

    train(cfg) -> run id

The recipe, in named steps (`_train` calls them in order):

1. `setup`: load the training items (questions or instruction records), apply the filters, render each
   one with jmed.prompts (the same rendering evaluation and serving use) and tokenise: prompt tokens
   are masked (-100), the loss is on the answer tokens and the EOS after them only. Load the base
   (jmed.models.load_base), wrap it with LoRA (prepared for k-bit training when quantised); AdamW with
   a warmup + cosine/linear/constant schedule.
2. `log_setup`: every resolved config field, the LoRA setup, versions, digests and datasets.
3. `fit`: `optimizer_step` (gradient accumulation, clipping, bf16 autocast on CUDA) with metrics every
   step, and a `checkpoint` every `checkpoint_every` steps.
4. `finish`: the loss curve and the adapter (`adapter/`, its card written by jmed.adapter).

Several processes (`accelerate launch` / `torchrun`, DDP or FSDP) run the same code: `accelerate`
shards nothing by itself here — each rank takes its own slice of every global batch — and only rank 0
talks to MLflow.

Resuming: `resume_from=<run id>` starts a *new* run (tag `jmed.resumed_from`, param `resume_from`)
that loads the latest checkpoint of that run (adapter, optimiser, scheduler, RNG states, data
position) and the run's resolved config, then trains the remaining steps. The finished adapter has
the same bytes as an uninterrupted run. (A new run, because `mlflow run` always opens one.)

`stop_after=k` stops after k optimiser steps as if interrupted: a checkpoint is written, the run is
tagged `jmed.stopped_at=k` and no `adapter/` is logged (it is not a finished model).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import jmed
from jmed import adapter
from jmed.config import TrainConfig, flat
from jmed.inference import encode, shots_for

log = logging.getLogger("jmed.train")

# Fields that may differ between an interrupted run and its resumption.
RESUME_FREE = ("resume_from", "stop_after", "checkpoint_every")
# Settings that only the user of the current step may switch on: never taken from a checkpoint, an
# adapter or a registered version (they are read from a shared store; `reproduce` refuses them).
TRUSTED_ONLY = ("trust_remote_code",)


class TrainError(ValueError):
    """Bad training input: a clear message, and the run ends FAILED."""


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]


# ---- data ----------------------------------------------------------------------------------------


def load_items(path: str, fmt: str, filters, what: str) -> tuple[list, str]:
    """Training items from `path` ("" = the bundled sample's train split), filtered; (items, path)."""
    from jmed import checks, data

    source = str(path or data.SAMPLE_TRAIN)
    items = checks.load_valid(source, fmt, exclude_ids=getattr(filters, "exclude_ids", ()))  # validate's checks
    items, _ = data.promptable(items)  # a question no prompt can be made of cannot be trained on
    kept = data.apply_filters(items, filters)
    if not kept:
        raise TrainError(f"{what} set is empty after filters: {source} holds {len(items)} item(s), "
                         f"none left after {filters}")
    return kept, source


def render_item(item, fmt: str, shots: list, tokenizer):
    from jmed import prompts
    from jmed.data import InstructionRecord

    if isinstance(item, InstructionRecord):
        return prompts.render_record(item, fmt, tokenizer)
    return prompts.render(item, fmt, shots, tokenizer)


def tokenize(items: list, cfg: TrainConfig, tokenizer) -> tuple[list[Example], dict]:
    """Examples with the prompt masked; overlength ones handled by `cfg.overlength` and counted."""
    examples, over, dropped, over_ids, excess = [], 0, 0, [], []
    for i, item in enumerate(items):
        r = render_item(item, cfg.prompt_format, shots_for(items, i, cfg.shots), tokenizer)
        p, t = encode(r.prompt, r.target, tokenizer)
        if len(p) + len(t) > cfg.max_length:
            over += 1
            excess.append(len(p) + len(t) - cfg.max_length)
            over_ids.append(item.id or f"#{i + 1}")
            if cfg.overlength == "error":
                continue
            if cfg.overlength == "drop" or len(t) >= cfg.max_length - 1:
                dropped += 1
                continue
            keep = cfg.max_length - len(t)  # truncate_prompt: keep the first token (BOS) and the end
            p = p[:1] + p[len(p) - (keep - 1):]
        examples.append(Example(item.id, p + t, [-100] * len(p) + t))
    if cfg.overlength == "error" and over:
        raise TrainError(f"{over} example(s) longer than max_length={cfg.max_length} tokens "
                         f"(overlength=error): {', '.join(over_ids[:20])}")
    if not examples:
        raise TrainError(f"no training example left: all {len(items)} are longer than max_length="
                         f"{cfg.max_length} (overlength={cfg.overlength})")
    excess.sort()
    return examples, {"overlength_examples": over, "dropped_examples": dropped, "examples": len(examples),
                      "overlength_median_tokens": excess[len(excess) // 2] if excess else 0,
                      "overlength_max_tokens": excess[-1] if excess else 0}


def collate(batch: list[Example], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids, labels, mask


def batch_indices(n: int, seed: int, global_step_batch: int, position: int) -> list[int]:
    """Indices of the `global_step_batch` examples starting at data `position` (examples seen so far):
    epochs are permutations of range(n) seeded by (seed, epoch), so a position fully defines the data."""
    import torch

    out = []
    while len(out) < global_step_batch:
        epoch, offset = divmod(position, n)
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        take = perm[offset:offset + global_step_batch - len(out)]
        out += take
        position += len(take)
    return out


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


# ---- checks, model -------------------------------------------------------------------------------


def wrap_lora(net, cfg: TrainConfig):
    """The base with LoRA adapters (k-bit preparation first when quantised); returns (peft model, targets)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from jmed.models import resolve_target_modules

    try:
        targets = resolve_target_modules(net, cfg.target_modules)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    ckpt_kwargs = {"use_reentrant": False}  # works with DDP and frozen inputs
    if cfg.quantization in ("4bit", "8bit"):
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                              gradient_checkpointing_kwargs=ckpt_kwargs)
    elif cfg.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        net.enable_input_require_grads()
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn here
    model = get_peft_model(net, lora)
    if not fsdp():  # LoRA weights train in fp32 (autocast computes in bf16 on CUDA); FSDP: one dtype
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    model.peft_config["default"].base_model_name_or_path = cfg.model  # the id as given, never a local path
    return model, targets


def fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def adapter_state(accelerator, model):
    """The full state dict under FSDP (a collective: every rank calls it); None otherwise."""
    return accelerator.get_state_dict(model) if fsdp() else None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"jmed_version": jmed.__version__}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "mlflow"):
        try:
            out[f"{pkg}_version"] = version(pkg)
        except PackageNotFoundError:
            out[f"{pkg}_version"] = ""
    from jmed.tracking import git_commit

    out["git_commit"] = git_commit()
    return out


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- checkpoints ---------------------------------------------------------------------------------


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
        return {"__dict__": [[_split_state(k, f"{prefix}.k{i}", tensors), _split_state(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
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


def save_checkpoint(folder: Path, model, optimizer, scheduler, step: int, position: int, cfg: TrainConfig,
                    state_dict=None):
    """Adapter (safetensors), optimiser/scheduler/RNG state (safetensors + JSON) and trainer_state.json.
    A checkpoint is read back from a shared store, so nothing in it is pickled: loading it runs no code."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    model.save_pretrained(folder / "adapter", save_embedding_layers=False, state_dict=state_dict)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": list(np.random.get_state())}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    tensors: dict = {}
    layout = _split_state({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
                          "s", tensors)
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
                log.warning("resume_from=%s: skipping incomplete checkpoint(s) %s (the run was killed while "
                            "writing them); resuming from %s", run_id, ", ".join(partial), path)
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))
        partial.append(path)
    raise TrainError(f"resume_from={run_id}: no complete checkpoint; {', '.join(reversed(partial))} were only "
                     f"partly written (no {CHECKPOINT_DONE} marker)")


def resumed_config(cfg: TrainConfig, state: dict) -> TrainConfig:
    """The interrupted run's resolved config, with this call's resume/stop/checkpoint fields."""
    from jmed.config import from_flat

    saved = from_flat(TrainConfig, state["config"])
    free, defaults = RESUME_FREE + TRUSTED_ONLY, TrainConfig()
    # An option given with --resume-from that contradicts the run being continued would be silently ignored:
    # refuse it (a value equal to the default cannot be told from "not given", and is not checked).
    clash = [f"{f.name}={getattr(cfg, f.name)!r} (the run has {getattr(saved, f.name)!r})"
             for f in dataclasses.fields(TrainConfig) if f.name not in free
             and getattr(cfg, f.name) != getattr(defaults, f.name) and getattr(cfg, f.name) != getattr(saved, f.name)]
    if clash:
        raise TrainError(f"--resume-from {cfg.resume_from} continues that run with its own settings; these options "
                         f"differ from them: {', '.join(clash)}. Drop them, or start a new run without --resume-from")
    return dataclasses.replace(saved, **{k: getattr(cfg, k) for k in free})


def load_checkpoint_adapter(folder: Path, model) -> tuple[int, int]:
    """Load the checkpoint's adapter weights; (step, data position)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(folder / "adapter" / "adapter_model.safetensors"))
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
        raise TrainError(f"checkpoint {folder.name}: it holds pickled state ({', '.join(pickled)}), which jmed "
                         f"never loads (unpickling runs code from the store); resume needs a checkpoint with "
                         f"{STATE_TENSORS} and {STATE_JSON} (jmed >= 0.2), or train again")
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


def load_checkpoint_state(folder: Path, optimizer, scheduler) -> None:
    """Optimiser, scheduler and RNG states (RNG last: nothing may draw random numbers after it)."""
    import numpy as np
    import torch

    state = read_checkpoint_state(folder)
    try:
        optimizer.load_state_dict(state["optimizer"])
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


# ---- the run -------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> str:
    """Train a LoRA adapter; returns the MLflow run id (the same on every rank)."""
    from accelerate import Accelerator

    import torch

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    from jmed import tracking
    from jmed.tracking import BASE_TAG, slug, step_run

    tracking.setup()  # every rank reads the same store (checkpoints when resuming); rank 0 writes
    tags = {BASE_TAG: slug(cfg.model)}
    if cfg.resume_from:
        tags["jmed.resumed_from"] = cfg.resume_from
    ctx = step_run("train", run_name=f"train-{slug(cfg.model)}", tags=tags) if main else contextlib.nullcontext()
    run_id = ""
    cleanup: list = []
    try:
        with ctx as run:
            run_id = run.info.run_id if main else ""
            try:
                _train(cfg, accelerator, run_id, cleanup)
            finally:
                for finish in cleanup:  # e.g. the system-metrics thread, also on errors and Ctrl-C
                    finish()
    finally:
        if accelerator.num_processes > 1:
            ids = [run_id]
            torch.distributed.broadcast_object_list(ids, src=0)
            run_id = ids[0]
            accelerator.wait_for_everyone()
    return run_id


def _train(cfg: TrainConfig, accelerator, run_id: str, cleanup: list) -> None:
    """The recipe: set up, log the setup, fit, finish. Each step is one function below."""
    s = setup(cfg, accelerator)
    if s.main:
        log_setup(s)
        monitor = _system_metrics(run_id)
        if monitor is not None:
            cleanup.append(monitor.finish)
        cleanup.insert(0, lambda: _flush(s.mlflow, run_id, s.pending))  # metrics up to an error or Ctrl-C
    with tempfile.TemporaryDirectory(prefix="jmed-train-") as tmp:
        stopped = fit(s, accelerator, run_id, Path(tmp))
        finish(s, accelerator, run_id, Path(tmp), stopped)


@dataclass
class Setup:
    """What the fit loop and the finish step need, built once by `setup`."""

    cfg: TrainConfig
    main: bool
    mlflow: object  # the mlflow module on rank 0, else None: only rank 0 talks to MLflow
    items: list
    train_path: str
    eval_items: list
    eval_path: str
    examples: list
    counts: dict
    eval_examples: list
    model: object
    tokenizer: object
    info: dict
    targets: object
    optimizer: object
    scheduler: object
    max_steps: int
    step: int
    position: int
    device: str
    dtype: object
    world: int  # processes (DDP / FSDP ranks)
    losses: list = dataclasses.field(default_factory=list)  # (step, loss) for the curve
    tokens: float = 0.0  # tokens trained on by this process's fit loop, and its seconds (the summary)
    seconds: float = 0.0
    eval_loss: float | None = None
    pending: list = dataclasses.field(default_factory=list)  # metrics not yet sent to MLflow

    @property
    def base_dev(self):
        return next(p for p in self.model.parameters()).device

    @property
    def autocast(self) -> bool:
        import torch

        return self.base_dev.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16)


def setup(cfg: TrainConfig, accelerator) -> Setup:
    """Model, data and optimiser: the resumed config and state when resuming, seeds, tokenised data,
    the base wrapped with LoRA (and DDP/FSDP), AdamW and its schedule."""
    import numpy as np
    import torch

    from jmed import models

    main = accelerator.is_main_process
    mlflow = None
    if main:
        import mlflow
    checkpoint = None
    if cfg.resume_from:
        checkpoint = latest_checkpoint(cfg.resume_from)
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        cfg = resumed_config(cfg, state)
        if main:
            from jmed.tracking import BASE_TAG, slug

            mlflow.set_tag(BASE_TAG, slug(cfg.model))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")  # bitsandbytes on CPU: known, harmless
    warnings.filterwarnings("ignore", message=".*gemv_4bit.*")

    items, train_path = load_items(cfg.train_data, cfg.data_format, cfg.filters, "training")
    eval_items, eval_path = ([], "")
    if cfg.eval_data:
        eval_items, eval_path = load_items(cfg.eval_data, cfg.data_format, cfg.filters, "evaluation")

    device = str(accelerator.device)
    if cfg.quantization in ("4bit", "8bit") and device.startswith("cuda"):
        device = f"cuda:{accelerator.local_process_index}"
    net, tokenizer, info = models.load_base(cfg.model, cfg.quantization, cfg.precision,
                                            cfg.trust_remote_code, device=device)
    examples, counts = tokenize(items, cfg, tokenizer)
    eval_examples = tokenize(eval_items, dataclasses.replace(cfg, overlength="drop"), tokenizer)[0] if eval_items else []
    model, targets = wrap_lora(net, cfg)

    per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes  # examples per optimiser step
    max_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * len(examples) / per_step))
    step, position = 0, 0
    if checkpoint is not None:  # adapter weights before wrapping; optimiser, scheduler, RNG after
        step, position = load_checkpoint_adapter(checkpoint, model)
    info["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info["total"] = sum(p.numel() for p in model.parameters())
    model = accelerator.prepare(model)  # DDP / FSDP wrapping (nothing for one process)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_schedule, cfg.warmup_steps, max_steps))
    if checkpoint is not None:
        load_checkpoint_state(checkpoint, optimizer, scheduler)
    return Setup(cfg, main, mlflow, items, train_path, eval_items, eval_path, examples, counts, eval_examples,
                 model, tokenizer, info, targets, optimizer, scheduler, max_steps, step, position, device,
                 models.resolve_precision(cfg.precision)[1], accelerator.num_processes)


def log_setup(s: Setup) -> None:
    """Rank 0: every resolved setting, digest and version as params; the datasets; data metrics."""
    from jmed import data
    from jmed.tracking import log_dataset, log_params

    cfg, counts, info = s.cfg, s.counts, s.info
    train_digest = data.digest(s.items)
    log_params({**flat(cfg), "train_data_path": s.train_path, "train_data_digest": train_digest,
                "train_items": len(s.items), "train_examples": counts["examples"],
                "overlength_examples": counts["overlength_examples"], "dropped_examples": counts["dropped_examples"],
                "eval_data_digest": data.digest(s.eval_items) if s.eval_items else "",
                "base_model": cfg.model, "base_revision": info["revision"], "base_architecture": info["architecture"],
                "tokenizer_hash": info["tokenizer_hash"],
                "lora_targets": ",".join(s.targets) if isinstance(s.targets, list) else s.targets,
                "trainable_params": info["trainable"], "total_params": info["total"],
                "resolved_max_steps": s.max_steps, "world_size": s.world, "device": s.device,
                "dtype": info["dtype"], **versions()})
    log_dataset(s.items, "train", s.train_path, train_digest, "training")
    if s.eval_items:
        log_dataset(s.eval_items, "eval", s.eval_path, data.digest(s.eval_items), "evaluation")
    s.mlflow.log_metrics({f"data/{k}": counts[k] for k in ("overlength_examples", "dropped_examples",
                                                           "overlength_median_tokens", "overlength_max_tokens")},
                         step=0)
    if counts["overlength_examples"]:
        log.warning("%d of %d example(s) longer than max_length=%d, by %d tokens (median), %d (max): "
                    "policy %s, %d dropped; see README \"Choosing max_length\"", counts["overlength_examples"],
                    len(s.items), cfg.max_length, counts["overlength_median_tokens"],
                    counts["overlength_max_tokens"], cfg.overlength, counts["dropped_examples"])


def fit(s: Setup, accelerator, run_id: str, tmp: Path) -> bool:
    """Optimiser steps up to max_steps, with checkpoints; True when stopped early (`stop_after`)."""
    from tqdm.auto import tqdm

    cfg = s.cfg
    from jmed.console import progress_disabled

    bar = tqdm(total=s.max_steps, initial=s.step, disable=True if not s.main else progress_disabled(), desc="train",
               dynamic_ncols=True, leave=False)
    stop_at = cfg.stop_after if cfg.stop_after and cfg.stop_after < s.max_steps else 0
    s.model.train()
    while s.step < s.max_steps:
        t0 = time.perf_counter()
        loss, tokens, grad_norm = optimizer_step(s, accelerator)
        if s.main:
            took = time.perf_counter() - t0
            tps, s.tokens, s.seconds = tokens / took, s.tokens + tokens, s.seconds + took
            s.losses.append((s.step, loss))
            s.pending.append((s.step, time.time(), {
                "train/loss": loss, "train/lr": s.scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                "train/tokens_per_s": tps, "train/tokens": tokens,
                "train/peak_memory_mb": peak_memory_mb(s.base_dev.type)}))
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            if len(s.pending) >= 10:
                _flush(s.mlflow, run_id, s.pending)
        ckpt_due = cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0 and s.step < s.max_steps
        if ckpt_due or s.step == stop_at:
            checkpoint(s, accelerator, tmp, with_eval_loss=bool(ckpt_due))
        if s.step == stop_at:
            break
    bar.close()
    return s.step < s.max_steps


def optimizer_step(s: Setup, accelerator) -> tuple[float, float, float]:
    """One optimiser step over grad_accum micro-batches; (mean loss, tokens, grad norm) over all ranks."""
    import torch

    cfg, world, rank, dev = s.cfg, accelerator.num_processes, accelerator.process_index, s.base_dev
    per_step = cfg.batch_size * cfg.grad_accum * world
    idx = batch_indices(len(s.examples), cfg.seed, per_step, s.position)
    s.position += per_step
    loss_sum, tokens = torch.zeros((), device=dev), torch.zeros((), device=dev)
    for micro in range(cfg.grad_accum):
        start = (micro * world + rank) * cfg.batch_size
        micro_batch = [s.examples[i] for i in idx[start:start + cfg.batch_size]]  # this rank's slice
        ids, labels, mask = (t.to(dev) for t in collate(micro_batch, s.tokenizer.pad_token_id))
        sync = micro == cfg.grad_accum - 1
        with (contextlib.nullcontext() if sync else accelerator.no_sync(s.model)):
            with torch.autocast(dev.type, dtype=s.dtype, enabled=s.autocast):
                loss = s.model(input_ids=ids, attention_mask=mask, labels=labels).loss
            accelerator.backward(loss / cfg.grad_accum)
        loss_sum += loss.detach() / cfg.grad_accum
        tokens += mask.sum()
    grad_norm = accelerator.clip_grad_norm_(s.model.parameters(), cfg.max_grad_norm)
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.step += 1
    return (accelerator.reduce(loss_sum, "mean").item(), accelerator.reduce(tokens, "sum").item(),
            float(grad_norm))


def checkpoint(s: Setup, accelerator, tmp: Path, with_eval_loss: bool) -> None:
    """Log a checkpoint (and the eval loss, when there is eval data) at the current step."""
    if s.eval_examples and with_eval_loss:
        ev = eval_loss(s.model, s.eval_examples, s.cfg.batch_size, s.tokenizer.pad_token_id, accelerator,
                       s.dtype, s.autocast)
        if s.main:
            s.pending.append((s.step, time.time(), {"eval/loss": ev}))
    full = adapter_state(accelerator, s.model)
    if s.main:
        folder = tmp / f"step-{s.step:06d}"
        save_checkpoint(folder, accelerator.unwrap_model(s.model), s.optimizer, s.scheduler, s.step, s.position,
                        s.cfg, full)
        s.mlflow.log_artifacts(str(folder), f"checkpoints/step-{s.step:06d}")
        done = tmp / CHECKPOINT_DONE  # last, on its own: its presence means every file above is there
        done.write_text(f"step {s.step}\n", encoding="utf-8")
        s.mlflow.log_artifact(str(done), f"checkpoints/step-{s.step:06d}")
    accelerator.wait_for_everyone()


def finish(s: Setup, accelerator, run_id: str, tmp: Path, stopped: bool) -> None:
    """The final eval loss, the loss curve, and, unless stopped early, the adapter with its card."""
    from jmed import data

    if s.eval_examples and not stopped:
        ev = eval_loss(s.model, s.eval_examples, s.cfg.batch_size, s.tokenizer.pad_token_id, accelerator,
                       s.dtype, s.autocast)
        if s.main:
            s.eval_loss = ev
            s.pending.append((s.step, time.time(), {"eval/loss": ev}))
    full = adapter_state(accelerator, s.model) if not stopped else None
    if s.main:
        _flush(s.mlflow, run_id, s.pending, final=True)
        _loss_curve(s.losses, tmp, s.mlflow)
        if stopped:
            s.mlflow.set_tag("jmed.stopped_at", str(s.step))
        else:
            cfg, out = s.cfg, tmp / "adapter"
            accelerator.unwrap_model(s.model).save_pretrained(out, save_embedding_layers=False, state_dict=full)
            adapter.write(out, {
                "model": cfg.model, "base_revision": s.info["revision"], "prompt_format": cfg.prompt_format,
                "shots": cfg.shots, "protocol": _protocol(cfg.prompt_format), "train_run_id": run_id,
                "train_data_digest": data.digest(s.items), "tokenizer_hash": s.info["tokenizer_hash"],
                "lora_targets": s.targets, "jmed_version": jmed.__version__, "config": flat(cfg)})
            s.mlflow.log_artifacts(str(out), "adapter")
        from jmed.console import say

        say(summary(s, run_id, stopped))
        s.mlflow.set_tag("mlflow.note.content", description(s, run_id, stopped))
    accelerator.wait_for_everyone()


def description(s: Setup, run_id: str, stopped: bool) -> str:
    """The run's description in the MLflow UI: what was trained, on what data, and how it ended."""
    cfg, last = s.cfg, (s.losses[-1][1] if s.losses else None)
    method = "4-bit QLoRA" if cfg.quantization == "4bit" else "LoRA"
    return (f"{method} (r {cfg.lora_r}, alpha {cfg.lora_alpha}) of `{cfg.model}`, prompt format `{cfg.prompt_format}`, "
            f"on `{s.train_path}` ({len(s.items)} items, {len(s.examples)} examples) for {s.step} of {s.max_steps} "
            f"steps; final loss {'n/a' if last is None else f'{last:.4f}'}"
            + ("" if s.eval_loss is None else f", eval loss {s.eval_loss:.4f}") + ".\n\n"
            + ("Stopped early: no adapter; resume with `--resume-from`." if stopped else
               f"Adapter: `runs:/{run_id}/adapter` (evaluate it with `jmed evaluate --adapter {run_id}`)."))


def summary(s: Setup, run_id: str, stopped: bool) -> str:
    """What the terminal shows when training ends: final loss and throughput, and what was left out."""
    from jmed.console import block

    last = [loss for _, loss in s.losses[-10:]]
    dropped = s.counts.get("dropped_examples", 0)
    return block(f"train {s.cfg.model} ({s.cfg.prompt_format}): {'stopped at' if stopped else 'finished'} "
                 f"step {s.step} of {s.max_steps}", [
        ("final loss", f"{last[-1]:.4f} (mean of the last {len(last)} steps {sum(last) / len(last):.4f})"
         if last else None),
        ("eval loss", None if s.eval_loss is None else f"{s.eval_loss:.4f} on {len(s.eval_examples)} examples"),
        ("tokens/s", f"{s.tokens / s.seconds:,.0f} ({s.tokens:,.0f} tokens in {s.seconds:.1f} s)" if s.seconds else None),
        ("examples", f"{len(s.examples)} from {len(s.items)} items"
                     + (f"; {dropped} left out: longer than max_length={s.cfg.max_length} (--overlength drop)" if dropped else "")),
        ("adapter", "not written (stopped early; resume with --resume-from)" if stopped else f"runs:/{run_id}/adapter"),
        ("run", run_id),
    ])


def _protocol(fmt: str) -> str:
    from jmed.prompts import protocol_for

    return protocol_for(fmt)


def eval_loss(model, examples, batch_size, pad_id, accelerator, dtype, use_autocast) -> float:
    """Token-weighted mean loss on the answer tokens of `examples`, sharded over ranks."""
    import torch

    dev = next(p for p in model.parameters()).device
    model.eval()
    total = torch.zeros((), device=dev, dtype=torch.float64)
    count = torch.zeros((), device=dev, dtype=torch.float64)
    shard = examples[accelerator.process_index::accelerator.num_processes]
    with torch.no_grad():
        for i in range(0, len(shard), batch_size):
            ids, labels, mask = (t.to(dev) for t in collate(shard[i:i + batch_size], pad_id))
            with torch.autocast(dev.type, dtype=dtype, enabled=use_autocast):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shift, gold = logits[:, :-1], labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(shift.reshape(-1, shift.size(-1)), gold.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total += nll.double()
            count += (gold != -100).sum()
    model.train()
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return (total / count.clamp(min=1)).item()


def _flush(mlflow, run_id: str, pending: list, final: bool = False) -> None:
    """Send the pending step metrics, oldest first, removing what was sent. A tracking server that stays
    unreachable after MLflow's own retries keeps the rest pending for the next flush (training goes
    on, nothing is lost); only the `final` flush raises."""
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    while pending:
        chunk = pending[:100]  # at most 100 steps x 6 metrics: under MLflow's 1000 per batch
        try:
            client.log_batch(run_id, metrics=[Metric(k, float(v), int(ts * 1000), s)
                                              for s, ts, d in chunk for k, v in d.items()])
        except Exception as exc:  # noqa: BLE001 - the server is away: keep the metrics, say so
            if final:
                raise
            log.warning("tracking server unreachable (%s); %d step(s) of metrics kept for the next flush",
                        str(exc)[:200], len(pending))
            return
        del pending[:len(chunk)]


def _system_metrics(run_id: str):
    """MLflow system metrics (CPU, memory, GPU) for the run, where psutil is available."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=5, samples_before_logging=1)
        monitor.start()
        return monitor
    except Exception as exc:  # optional: psutil missing, unsupported platform
        log.info("system metrics unavailable: %s", exc)
        return None


def _loss_curve(losses: list, folder: Path, mlflow) -> None:
    if not losses:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in losses], [v for _, v in losses], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (answer tokens)")
    ax.set_title("jmed train")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / "loss_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    mlflow.log_artifact(str(path), "plots")
