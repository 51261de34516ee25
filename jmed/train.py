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
from jmed.checkpoint import (  # noqa: F401  (CHECKPOINT_DONE, resumed_config, TrainError: this module's API)
    CHECKPOINT_DONE,
    RESUME_FREE,
    TRUSTED_ONLY,
    TrainError,
    latest_checkpoint,
    load_checkpoint_adapter,
    load_checkpoint_state,
    read_checkpoint_state,
    resumed_config,
    save_adapter,
    save_checkpoint,
)
from jmed.config import TrainConfig, flat
from jmed.inference import encode, shots_for
from jmed.train_report import _flush, _loss_curve, _system_metrics, description, log_setup, peak_memory_mb, summary

log = logging.getLogger("jmed.train")


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]


def load_items(path: str, fmt: str, filters, what: str) -> tuple[list, str]:
    """Training items from `path` ("" = the bundled sample's train split), filtered; (items, path)."""
    from jmed import checks, data

    source = str(path or data.SAMPLE_TRAIN)
    items = checks.load_valid(source, fmt, exclude_ids=getattr(filters, "exclude_ids", ()))  # validate's checks
    if filters is not None:
        data.check_ids(items, filters, source)  # an id typo would change nothing, silently
    items, _ = data.promptable(items)  # a question no prompt can be made of cannot be trained on
    kept = data.apply_filters(items, filters)
    if not kept:
        raise TrainError(
            f"{what} set is empty after filters: {source} holds {len(items)} item(s), none left after {filters}"
        )
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
            p = p[:1] + p[len(p) - (keep - 1) :]
        examples.append(Example(item.id, p + t, [-100] * len(p) + t))
    if cfg.overlength == "error" and over:
        raise TrainError(
            f"{over} example(s) longer than max_length={cfg.max_length} tokens "
            f"(overlength=error): {', '.join(over_ids[:20])}"
        )
    if not examples:
        raise TrainError(
            f"no training example left: all {len(items)} are longer than max_length="
            f"{cfg.max_length} (overlength={cfg.overlength})"
        )
    excess.sort()
    return examples, {
        "overlength_examples": over,
        "dropped_examples": dropped,
        "examples": len(examples),
        "overlength_median_tokens": excess[len(excess) // 2] if excess else 0,
        "overlength_max_tokens": excess[-1] if excess else 0,
    }


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


GROUP_STEPS = 50  # group_by_length sorts the examples of this many consecutive steps by length


def epoch_order(n: int, seed: int, epoch: int, lengths: list[int] | None = None, step_batch: int = 1) -> list[int]:
    """An epoch's example order: a permutation of range(n) seeded by (seed, epoch); with `lengths`, each
    run of GROUP_STEPS steps of it sorted longest first (a stable sort: deterministic), so that a batch
    holds examples of similar length and pads little, while the epoch's order stays random at that scale."""
    import torch

    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return perm
    size = max(1, step_batch * GROUP_STEPS)
    return [i for start in range(0, n, size) for i in sorted(perm[start : start + size], key=lambda i: -lengths[i])]


def batch_indices(
    n: int, seed: int, global_step_batch: int, position: int, lengths: list[int] | None = None
) -> list[int]:
    """Indices of the `global_step_batch` examples starting at data `position` (examples seen so far):
    epochs are `epoch_order`s, so a position fully defines the data (and a resumed run continues it)."""
    out = []
    while len(out) < global_step_batch:
        epoch, offset = divmod(position, n)
        perm = epoch_order(n, seed, epoch, lengths, global_step_batch)
        take = perm[offset : offset + global_step_batch - len(out)]
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
        net = prepare_model_for_kbit_training(
            net, use_gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs
        )
    elif cfg.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        net.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
    )
    torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn here
    model = get_peft_model(net, lora)
    for p in model.parameters():  # LoRA weights train in fp32 (FSDP: each its own unit, see lora_wrap_policy)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    model.peft_config["default"].base_model_name_or_path = cfg.model  # the id as given, never a local path
    return model, targets


def fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def adapter_state(accelerator, model):
    """The full state dict under FSDP (a collective: every rank calls it); None otherwise."""
    if not fsdp():
        return None
    if not sharded(model):  # an FSDP launch run as DDP
        return accelerator.get_state_dict(model)
    with _fsdp_state_type(accelerator, model):
        return model.state_dict()


def _fsdp_state_type(accelerator, model):
    """Full (unsharded) state dicts on rank 0, as the shipped config's fsdp_state_dict_type says."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    # offload only from an accelerator: on CPU, offload_to_cpu clones from freed memory (SIGSEGV, torch 2.13)
    offload = accelerator.device.type != "cpu"
    return FSDP.state_dict_type(
        model,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
        FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True),
    )


def shard(model, accelerator):
    """The model wrapped by torch FSDP under an FSDP launch that accelerate runs as DDP: on CPU (gloo)
    accelerate 1.15 builds MULTI_CPU for any config, so jmed wraps the model itself, with the launch's
    own settings as accelerate's plugin reads them (sharding strategy, decoder layers as units,
    use_orig_params, prefetch); on GPUs accelerate wraps it (prepare) and this leaves it alone."""
    import torch
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not fsdp() or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return None
    try:
        plugin = FullyShardedDataParallelPlugin()
    except RuntimeError as exc:  # sync_module_states / cpu_ram_efficient_loading look for an accelerator
        raise TrainError(
            f"FSDP on CPU: {exc}; pass --fsdp_sync_module_states false --fsdp_cpu_ram_efficient_loading false"
        ) from None
    if plugin.fsdp_version != 1:
        raise TrainError(f"FSDP on CPU: fsdp_version {plugin.fsdp_version}; jmed shards with FSDP1 there")
    plugin.auto_wrap_policy = lora_wrap_policy(model)
    return FSDP(
        model,
        sharding_strategy=plugin.sharding_strategy,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        backward_prefetch=plugin.backward_prefetch,
        forward_prefetch=plugin.forward_prefetch,
        use_orig_params=plugin.use_orig_params,
        limit_all_gathers=plugin.limit_all_gathers,
        device_id=torch.device("cpu"),  # without it FSDP looks for an accelerator; accelerate says cpu:0
    )


def lora_wrap_policy(model):
    """FSDP1 units for a LoRA model: each decoder layer (its frozen base weights, in the base dtype) and
    each LoRA matrix on its own (trainable, fp32), since FSDP1 flattens a unit into one tensor of one
    dtype ("Must flatten tensors with uniform dtype" with bf16 base weights otherwise); peft's policy,
    as transformers' Trainer uses it for peft models."""
    from peft.utils.other import fsdp_auto_wrap_policy

    return fsdp_auto_wrap_policy(model)


def clip_grad_norm(accelerator, model, max_norm: float):
    """The global gradient norm, clipped: under FSDP each rank holds a shard of every gradient, so the
    norm is FSDP's own (over all shards); accelerate's would be this rank's shard alone on CPU."""
    if sharded(model):
        return model.clip_grad_norm_(max_norm)
    return accelerator.clip_grad_norm_(model.parameters(), max_norm)


def sharded(model) -> bool:
    """Whether `model` is really wrapped by FSDP: on CPU accelerate runs an FSDP config as DDP (MULTI_CPU)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return any(isinstance(m, FSDP) for m in model.modules())


def optimizer_state(accelerator, model, optimizer):
    """Under FSDP the full optimiser state, gathered on rank 0 (a collective: every rank calls it), so
    that a checkpoint resumes every rank's shard, not rank 0's alone; None otherwise (its own state:
    DDP replicas hold the same one)."""
    if not sharded(model):
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with _fsdp_state_type(accelerator, model):
        return FSDP.optim_state_dict(model, optimizer)


def optimizer_to_load(accelerator, model, optimizer):
    """Under FSDP: the full optimiser state of a checkpoint -> this rank's shard; None otherwise."""
    if not sharded(model):
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    def to_load(full: dict) -> dict:
        with _fsdp_state_type(accelerator, model):
            return FSDP.optim_state_dict_to_load(model=model, optim=optimizer, optim_state_dict=full)

    return to_load


def train(cfg: TrainConfig) -> str:
    """Train a LoRA adapter; returns the MLflow run id (the same on every rank)."""
    import torch
    from accelerate import Accelerator

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
    keep_logits: bool = False  # the forward takes `logits_to_keep` (answer_loss)
    computed: int = 0  # token positions computed by this process, padding included, and the real ones
    real: int = 0
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
    net, tokenizer, info = models.load_base(
        cfg.model, cfg.quantization, cfg.precision, cfg.trust_remote_code, device=device
    )
    examples, counts = tokenize(items, cfg, tokenizer)
    eval_examples = (
        tokenize(eval_items, dataclasses.replace(cfg, overlength="drop"), tokenizer)[0] if eval_items else []
    )
    model, targets = wrap_lora(net, cfg)

    per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes  # examples per optimiser step
    max_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * len(examples) / per_step))
    step, position = 0, 0
    if checkpoint is not None:  # adapter weights before wrapping; optimiser, scheduler, RNG after
        step, position = load_checkpoint_adapter(checkpoint, model)
    info["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info["total"] = sum(p.numel() for p in model.parameters())
    # DDP / FSDP wrapping (nothing for one process); an FSDP launch on CPU is wrapped by jmed (shard)
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None and plugin.fsdp_version == 1:  # FSDP on GPUs, wrapped by accelerate.prepare
        plugin.auto_wrap_policy = lora_wrap_policy(model)
    wrapped = shard(model, accelerator)
    model = wrapped if wrapped is not None else accelerator.prepare(model)
    # what really wraps it: FSDP (by accelerate on GPUs, by jmed on CPU), DDP (MULTI_CPU / MULTI_GPU), or NO
    info["sharded"], info["fsdp_units"] = sharded(model), 0
    info["distributed_type"] = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if info["sharded"]:  # FSDP units: the root, each decoder layer, each LoRA matrix
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        info["distributed_type"], info["fsdp_units"] = "FSDP", len(FSDP.fsdp_modules(model))
    info["rank0_params"] = sum(p.numel() for p in model.parameters())  # a shard of `total` when sharded
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_schedule, cfg.warmup_steps, max_steps))
    if checkpoint is not None:
        load_checkpoint_state(checkpoint, optimizer, scheduler, optimizer_to_load(accelerator, model, optimizer))
    from jmed.inference import _forward_kwargs

    keep = _forward_kwargs(accelerator.unwrap_model(model))["keep"]
    return Setup(
        cfg,
        main,
        mlflow,
        items,
        train_path,
        eval_items,
        eval_path,
        examples,
        counts,
        eval_examples,
        model,
        tokenizer,
        info,
        targets,
        optimizer,
        scheduler,
        max_steps,
        step,
        position,
        device,
        net.dtype if cfg.quantization in ("", "none") else models.resolve_precision(cfg.precision)[1],
        accelerator.num_processes,
        keep_logits=keep,
    )


def fit(s: Setup, accelerator, run_id: str, tmp: Path) -> bool:
    """Optimiser steps up to max_steps, with checkpoints; True when stopped early (`stop_after`)."""
    from tqdm.auto import tqdm

    cfg = s.cfg
    from jmed.console import progress_disabled

    bar = tqdm(
        total=s.max_steps,
        initial=s.step,
        disable=True if not s.main else progress_disabled(),
        desc="train",
        dynamic_ncols=True,
        leave=False,
    )
    stop_at = cfg.stop_after if cfg.stop_after and cfg.stop_after < s.max_steps else 0
    s.model.train()
    while s.step < s.max_steps:
        t0 = time.perf_counter()
        loss, tokens, grad_norm = optimizer_step(s, accelerator)
        if s.main:
            took = time.perf_counter() - t0
            tps, s.tokens, s.seconds = tokens / took, s.tokens + tokens, s.seconds + took
            s.losses.append((s.step, loss))
            s.pending.append(
                (
                    s.step,
                    time.time(),
                    {
                        "train/loss": loss,
                        "train/lr": s.scheduler.get_last_lr()[0],
                        "train/grad_norm": grad_norm,
                        "train/tokens_per_s": tps,
                        "train/tokens": tokens,
                        "train/peak_memory_mb": peak_memory_mb(s.base_dev.type),
                    },
                )
            )
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


def answer_loss(model, ids, mask, labels, keep: bool):
    """Mean cross-entropy over the answer tokens (labels != -100), as transformers' causal-LM loss. With
    `keep` (the model's forward takes `logits_to_keep`), logits are computed only at the positions that
    predict an answer token, the union over the batch: the prompt's 49k-wide float32 logits, a quarter
    of a SmolLM2 step (benchmarks/profile_step.py), are never materialised."""
    import torch

    if not keep:
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    gold = labels[:, 1:]
    positions = torch.nonzero((gold != -100).any(dim=0)).flatten()  # predicting position t+1 from t
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=positions).logits.float()
    target = gold[:, positions]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100)


def optimizer_step(s: Setup, accelerator) -> tuple[float, float, float]:
    """One optimiser step over grad_accum micro-batches; (mean loss, tokens, grad norm) over all ranks."""
    import torch

    cfg, world, rank, dev = s.cfg, accelerator.num_processes, accelerator.process_index, s.base_dev
    per_step = cfg.batch_size * cfg.grad_accum * world
    lengths = [len(e.input_ids) for e in s.examples] if cfg.group_by_length else None
    idx = batch_indices(len(s.examples), cfg.seed, per_step, s.position, lengths)
    s.position += per_step
    loss_sum, tokens = torch.zeros((), device=dev), torch.zeros((), device=dev)
    for micro in range(cfg.grad_accum):
        start = (micro * world + rank) * cfg.batch_size
        micro_batch = [s.examples[i] for i in idx[start : start + cfg.batch_size]]  # this rank's slice
        ids, labels, mask = (t.to(dev) for t in collate(micro_batch, s.tokenizer.pad_token_id))
        s.computed += ids.numel()  # what the forward computes, padding included (data/padding_share)
        s.real += int(mask.sum())
        sync = micro == cfg.grad_accum - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(s.model):
            with torch.autocast(dev.type, dtype=s.dtype, enabled=s.autocast):
                loss = answer_loss(s.model, ids, mask, labels, s.keep_logits)
            accelerator.backward(loss / cfg.grad_accum)
        loss_sum += loss.detach() / cfg.grad_accum
        tokens += mask.sum()
    grad_norm = clip_grad_norm(accelerator, s.model, cfg.max_grad_norm)
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.step += 1
    return (accelerator.reduce(loss_sum, "mean").item(), accelerator.reduce(tokens, "sum").item(), float(grad_norm))


def checkpoint(s: Setup, accelerator, tmp: Path, with_eval_loss: bool) -> None:
    """Log a checkpoint (and the eval loss, when there is eval data) at the current step."""
    if s.eval_examples and with_eval_loss:
        ev = eval_loss(
            s.model, s.eval_examples, s.cfg.batch_size, s.tokenizer.pad_token_id, accelerator, s.dtype, s.autocast
        )
        if s.main:
            s.pending.append((s.step, time.time(), {"eval/loss": ev}))
    full = adapter_state(accelerator, s.model)
    optim = optimizer_state(accelerator, s.model, s.optimizer)
    if s.main:
        folder = tmp / f"step-{s.step:06d}"
        save_checkpoint(
            folder, accelerator.unwrap_model(s.model), s.optimizer, s.scheduler, s.step, s.position, s.cfg, full, optim
        )
        s.mlflow.log_artifacts(str(folder), f"checkpoints/step-{s.step:06d}")
        done = tmp / CHECKPOINT_DONE  # last, on its own: its presence means every file above is there
        done.write_text(f"step {s.step}\n", encoding="utf-8")
        s.mlflow.log_artifact(str(done), f"checkpoints/step-{s.step:06d}")
    accelerator.wait_for_everyone()


def finish(s: Setup, accelerator, run_id: str, tmp: Path, stopped: bool) -> None:
    """The final eval loss, the loss curve, and, unless stopped early, the adapter with its card."""
    from jmed import data

    if s.eval_examples and not stopped:
        ev = eval_loss(
            s.model, s.eval_examples, s.cfg.batch_size, s.tokenizer.pad_token_id, accelerator, s.dtype, s.autocast
        )
        if s.main:
            s.eval_loss = ev
            s.pending.append((s.step, time.time(), {"eval/loss": ev}))
    full = adapter_state(accelerator, s.model) if not stopped else None
    if s.main:
        if s.computed:  # the share of computed token positions that were padding (this process's steps)
            s.pending.append((s.step, time.time(), {"data/padding_share": 1 - s.real / s.computed}))
        _flush(s.mlflow, run_id, s.pending, final=True)
        _loss_curve(s.losses, tmp, s.mlflow)
        if stopped:
            s.mlflow.set_tag("jmed.stopped_at", str(s.step))
        else:
            cfg, out = s.cfg, tmp / "adapter"
            save_adapter(accelerator.unwrap_model(s.model), out, full)
            adapter.write(
                out,
                {
                    "model": cfg.model,
                    "base_revision": s.info["revision"],
                    "prompt_format": cfg.prompt_format,
                    "shots": cfg.shots,
                    "protocol": _protocol(cfg.prompt_format),
                    "train_run_id": run_id,
                    "train_data_digest": data.digest(s.items),
                    "tokenizer_hash": s.info["tokenizer_hash"],
                    "lora_targets": s.targets,
                    "jmed_version": jmed.__version__,
                    "config": flat(cfg),
                },
            )
            s.mlflow.log_artifacts(str(out), "adapter")
        from jmed.console import say

        say(summary(s, run_id, stopped))
        s.mlflow.set_tag("mlflow.note.content", description(s, run_id, stopped))
    accelerator.wait_for_everyone()


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
    shard = examples[accelerator.process_index :: accelerator.num_processes]
    with torch.no_grad():
        for i in range(0, len(shard), batch_size):
            ids, labels, mask = (t.to(dev) for t in collate(shard[i : i + batch_size], pad_id))
            with torch.autocast(dev.type, dtype=dtype, enabled=use_autocast):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shift, gold = logits[:, :-1], labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                shift.reshape(-1, shift.size(-1)), gold.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += nll.double()
            count += (gold != -100).sum()
    model.train()
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return (total / count.clamp(min=1)).item()
