"""Frozen configuration per step. Each field owns its default, help text and allowed values once
(dataclass field metadata); the CLI options, MLproject parameters, `--dry-run` and tests all come from here.

Unset is `None`: "the adapter's own" or "by model", resolved where that is known. A config checks
itself when built and reports every problem at once (`ConfigError`). `flat(cfg)` gives the flat dict
logged as MLflow params (None is logged as "", as jmed 0.1 logged its unset values).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from jmed import exams
from jmed.engine import ENGINES
from jmed.prompts import EXTRACTIONS
from jmed.prompts import FORMATS as PROMPT_FORMATS

EXAM_KINDS = exams.names()  # every registered exam kind (jmed/exams/<kind>.py)

MAX_NEW_TOKENS = 1024  # the most tokens one answer may generate: evaluate and serving share it
# The longest prompt (question, choices, shots and template) evaluate and serving run, in tokens; a
# model with a shorter context lowers it to that (jmed.inference.prompt_token_limit). Characters: the
# data's own limit (jmed.records.MAX_TEXT_CHARS), which validation checks without a tokenizer.
MAX_PROMPT_TOKENS = 8192
# One engine batch holds at most this many padded prompt tokens (rows x the longest), so memory is
# bounded by the budget, not by what a batch happens to mix: a long prompt runs with few others.
MAX_BATCH_TOKENS = 16384

PRESETS_FILE = Path(__file__).parent / "presets.yaml"
DEFAULT_LR = {"tiny": 1e-2, "hf": 2e-4}  # AdamW rates when neither a preset nor the user sets one

# The allowed values, once. Prompt formats live with their renderers (jmed.prompts, stdlib only).
PROTOCOLS = ("letter", "text", "loglik")
QUANTIZATIONS = ("none", "8bit", "4bit")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "linear", "constant")
OVERLENGTH_POLICIES = ("truncate_prompt", "drop", "error")
PARSINGS = ("official", "lenient")


TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_bool(value: str) -> bool:
    """A boolean from the command line, MLproject or logged params: the one parser jmed has."""
    word = str(value).strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError(f"expected true or false, got {value!r}")
    return word in TRUE_WORDS


class ConfigError(ValueError):
    """Every problem of one config, one per line (`field: message`)."""

    def __init__(self, cls_name: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid {cls_name}: " + "; ".join(problems))


def setting(default, help: str, choices=None, minimum=None, unset: str = "", maximum=None):
    """A config field: its default, the help text the CLI shows, and what values it allows.
    `unset` says what None means; `minimum` and `maximum` are inclusive."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "unset": unset}
    if isinstance(default, (tuple, list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def _base_type(hint):
    """`int | None` -> int; other hints unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _problems(cfg) -> list[str]:
    """Type, choice and range checks from the field metadata."""
    hints = typing.get_type_hints(type(cfg))
    out = []
    for f in fields(cfg):
        value, typ = getattr(cfg, f.name), _base_type(hints[f.name])
        if value is None:
            if not f.metadata.get("unset"):
                out.append(f"{f.name}: must be set")
            continue
        if typ is bool and not isinstance(value, bool):
            out.append(f"{f.name}: expected true or false, got {value!r}")
            continue
        if typ in (int, float) and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (typ is int and not isinstance(value, int))
        ):
            out.append(f"{f.name}: expected {'an integer' if typ is int else 'a number'}, got {value!r}")
            continue
        if typ is str and not isinstance(value, str):
            out.append(f"{f.name}: expected text, got {value!r}")
            continue
        if typ is float and not math.isfinite(value):  # nan passes every comparison; inf never ends
            out.append(f"{f.name}: must be a finite number, got {value}")
            continue
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            out.append(f"{f.name}: unknown {f.name.replace('_', ' ')} {value!r}; choose one of: {', '.join(choices)}")
        minimum = f.metadata.get("minimum")
        if minimum is not None and value < minimum:
            out.append(f"{f.name}: must be at least {minimum}, got {value}")
        maximum = f.metadata.get("maximum")
        if maximum is not None and value > maximum:
            out.append(f"{f.name}: must be at most {maximum}, got {value}")
    return out


class Checked:
    """Mixin: a frozen config that validates itself in __post_init__, collecting every problem."""

    def __post_init__(self):
        problems = _problems(self) + self.extra_problems()
        if problems:
            raise ConfigError(type(self).__name__, problems)

    def extra_problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class DataFilter(Checked):
    """Question filters usable by every step. Empty tuples mean "no restriction"."""

    text_only: bool = setting(False, "Keep only questions without figures.")
    five_choices: bool = setting(False, "Keep only 5-choice questions.")
    scored_only: bool = setting(False, "Drop questions worth 0 points.")
    years: tuple[int, ...] = setting((), "Comma-separated exam years to keep, e.g. 2018,2019.")
    blocks: tuple[str, ...] = setting((), "Comma-separated blocks to keep, e.g. B,E.")
    ids: tuple[str, ...] = setting((), "Comma-separated question ids to keep.")
    # e.g. a question `jmed validate` rejects, to use the rest
    exclude_ids: tuple[str, ...] = setting((), "Comma-separated question ids to leave out.")

    def extra_problems(self) -> list[str]:
        out = []
        for name in ("years", "blocks", "ids", "exclude_ids"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                out.append(f"filters.{name}: expected a tuple, got {value!r}")
        lower = [b for b in self.blocks if isinstance(self.blocks, tuple) and b != str(b).upper()]
        if lower:  # blocks are upper-case letters in every exam's ids: "b" would match nothing, silently
            out.append(f"blocks: {', '.join(map(repr, lower))} is lower case; blocks are A, B, … (e.g. B,E)")
        return out


@dataclass(frozen=True)
class TrainConfig(Checked):
    model: str = setting(
        "tiny", "Base model: tiny, smollm2-135m, gemma3-270m, a .gguf file, an HF id or a local folder."
    )
    train_data: str | None = setting(
        None, "Questions or instruction records.", unset="the bundled sample's train split"
    )
    eval_data: str | None = setting(None, "Optional questions/records for eval/loss.", unset="none")
    data_format: str = setting("auto", "Data format (auto: detected).")
    filters: DataFilter = setting(DataFilter(), "Question filters.")
    prompt_format: str = setting(
        "igakuqa", "Prompt format: igakuqa | alpaca_med | medpalm | chat-<format>.", choices=PROMPT_FORMATS
    )
    shots: int = setting(0, "Solved examples placed before each question.", minimum=0)
    preset: str | None = setting(
        None, "jmedlora-7b | jmedlora-70b (jmed/presets.yaml); explicit options override it.", unset="none"
    )
    lora_r: int = setting(8, "LoRA rank.", minimum=1)
    lora_alpha: int = setting(16, "LoRA alpha.", minimum=1)
    lora_dropout: float = setting(0.05, "LoRA dropout.", minimum=0, maximum=1)
    target_modules: str | None = setting(
        None, "Comma-separated module names, qkv, or all-linear.", unset="by architecture"
    )
    quantization: str = setting("none", "none | 8bit | 4bit (nf4, double quantisation).", choices=QUANTIZATIONS)
    learning_rate: float | None = setting(
        None, "AdamW learning rate (presets set the papers' rates).", unset="1e-2 for tiny, 2e-4 for other models"
    )
    lr_schedule: str = setting("cosine", "Learning-rate schedule.", choices=LR_SCHEDULES)
    warmup_steps: int = setting(0, "Linear warmup steps.", minimum=0)
    max_steps: int = setting(60, "Optimiser steps; > 0 wins over --epochs.", minimum=0)
    epochs: float = setting(1.0, "Epochs when --max-steps is 0.", minimum=0)
    batch_size: int = setting(8, "Examples per process per micro-batch.", minimum=1)
    grad_accum: int = setting(1, "Micro-batches per optimiser step.", minimum=1)
    max_length: int = setting(512, "Maximum tokens per example.", minimum=1)
    overlength: str = setting("truncate_prompt", "Examples over --max-length.", choices=OVERLENGTH_POLICIES)
    group_by_length: bool = setting(
        False,
        "Batch examples of similar length (within groups of 50 steps of a seeded epoch order): less padding.",
    )
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.", minimum=0)
    weight_decay: float = setting(0.0, "AdamW weight decay.", minimum=0)
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass (less memory).")
    precision: str = setting(
        "auto",
        "auto: bf16 on CUDA and on CPUs with bf16 matrix units (AMX, AVX-512 BF16), else fp32.",
        choices=PRECISIONS,
    )
    seed: int = setting(42, "Random seed.", minimum=0)
    checkpoint_every: int = setting(0, "Log a checkpoint every N steps (0: none).", minimum=0)
    resume_from: str | None = setting(
        None, "A train run id: continue from its latest checkpoint (new run).", unset="a fresh start"
    )
    stop_after: int = setting(0, "Stop after N steps as if interrupted, writing a checkpoint (0: never).", minimum=0)
    trust_remote_code: bool = setting(False, "Run the model repository's own Python code.")

    def __post_init__(self):
        # A rate that makes the tiny model learn in 60 steps would wreck a real model: resolve by model.
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", DEFAULT_LR["tiny" if self.model == "tiny" else "hf"])
        super().__post_init__()

    def extra_problems(self) -> list[str]:
        out = []
        if isinstance(self.learning_rate, (int, float)) and self.learning_rate <= 0:
            out.append(f"learning_rate: must be above 0, got {self.learning_rate}")
        if (
            isinstance(self.max_steps, int)
            and isinstance(self.epochs, (int, float))
            and self.max_steps <= 0
            and self.epochs <= 0
        ):
            out.append("max_steps, epochs: set max_steps > 0 or epochs > 0")
        if (
            isinstance(self.warmup_steps, int)
            and isinstance(self.max_steps, int)
            and 0 < self.max_steps < self.warmup_steps
        ):
            out.append(
                f"warmup_steps: {self.warmup_steps} is more than max_steps {self.max_steps}: the learning rate "
                "would never reach its value"
            )
        return out


@dataclass(frozen=True)
class EvalConfig(Checked):
    model: str | None = setting(None, "Base model: tiny, an HF id or a local folder.", unset="the adapter's, else tiny")
    adapter: str | None = setting(
        None,
        "Train run id, runs:/<id>/adapter, models:/<name>/<version|@alias>, or a folder.",
        unset="none: the base model alone",
    )
    eval_data: str | None = setting(None, "Questions to evaluate.", unset="the bundled sample's test split")
    data_format: str = setting("auto", "Data format (auto: detected).")
    filters: DataFilter = setting(DataFilter(), "Question filters.")
    protocol: str | None = setting(None, "letter | text | loglik.", choices=PROTOCOLS, unset="the prompt format's own")
    prompt_format: str | None = setting(
        None, "Prompt format.", choices=PROMPT_FORMATS, unset="the adapter's, else igakuqa"
    )
    parsing: str = setting("lenient", "Answer parsing: official (IgakuQA's reference) | lenient.", choices=PARSINGS)
    exam_kind: str | None = setting(
        None,
        "The exam the questions are from: corrections, years and pass rules follow it.",
        choices=EXAM_KINDS,
        unset="the reader's (IgakuQA: medical)",
    )
    extraction: str = setting(
        "last-block",
        "Text protocol: the authors' harness's answer extraction, last-block "
        "(June 2024) | first-line (from July 2024).",
        choices=EXTRACTIONS,
    )
    shots: int | None = setting(None, "Solved examples before each question.", minimum=0, unset="the adapter's, else 0")
    limit: int = setting(0, "Evaluate only the first N questions (0: all; biased to block A, see --sample).", minimum=0)
    sample: int = setting(0, "Evaluate a fixed random subset of N questions (seeded by --seed; 0: all).", minimum=0)
    batch_size: int = setting(8, "Questions per batch.", minimum=1)
    max_new_tokens: int = setting(
        0,
        "Generation length (0: fit the answers, 16 for letters, the longest gold text + 8 for text).",
        minimum=0,
        maximum=MAX_NEW_TOKENS,
    )
    precision: str = setting(
        "auto",
        "auto: bf16 on CUDA and on CPUs with bf16 matrix units (AMX, AVX-512 BF16), else fp32.",
        choices=PRECISIONS,
    )
    quantization: str | None = setting(
        None, "none | 8bit | 4bit.", choices=QUANTIZATIONS, unset="the adapter's, else none"
    )
    engine: str = setting(
        "hf",
        "Inference engine: hf (jmed's own loop: exact, 4-bit, starts in seconds) | "
        "vllm (a vLLM server: many times faster on a real evaluation).",
        choices=ENGINES,
    )
    engine_url: str = setting(
        "",
        "With --engine vllm: a running OpenAI-compatible vLLM server "
        "(http://host:port/v1) serving the model (empty: jmed starts one for the step).",
    )
    seed: int = setting(42, "Random seed.", minimum=0)
    compare_base: bool = setting(True, "Also record the delta against the base model.")

    def extra_problems(self) -> list[str]:
        out = []
        if self.engine_url and self.engine != "vllm":
            out.append(f"engine_url: a server URL is for --engine vllm, not {self.engine}")
        if self.engine_url and not str(self.engine_url).startswith(("http://", "https://")):
            out.append(f"engine_url: expected http://host:port/v1, got {self.engine_url!r}")
        if self.engine == "vllm" and self.quantization in ("4bit", "8bit"):
            out.append(
                f"quantization: {self.quantization} is bitsandbytes in the hf engine; the vllm engine runs "
                "the model in bfloat16 (a QLoRA adapter is merged into it); use --engine hf"
            )
        return out


def help_text(f: dataclasses.Field) -> str:
    """A field's help with its default (or what unset means), for the CLI and the README."""
    text = f.metadata.get("help", "")
    if f.metadata.get("unset") and (f.default is None):
        return f"{text} (default: {f.metadata['unset']})"
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        default = str(default).lower()
    return f"{text} (default: {default})" if default not in (None, "") else text


def flat(cfg, prefix: str = "") -> dict:
    """Flatten a config (nested dataclasses become `filters.text_only`, tuples become "a,b", None "")."""
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat(value, f"{prefix}{f.name}."))
        elif isinstance(value, (tuple, list)):
            out[f"{prefix}{f.name}"] = ",".join(str(v) for v in value)
        else:
            out[f"{prefix}{f.name}"] = "" if value is None else value
    return out


def load_presets() -> dict:
    import yaml

    if not PRESETS_FILE.exists():
        return {}
    return yaml.safe_load(PRESETS_FILE.read_text(encoding="utf-8")) or {}


def build(cls, overrides: dict | None = None, preset: str | None = None):
    """Defaults < preset < explicit overrides (strings are converted to the field types).

    None and "" mean "not given" (MLflow passes "" for unset parameters), so they never override a
    preset. Unknown keys and presets are errors, never ignored; all problems are reported together."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None and v != ""}
    values: dict = {}
    if preset:
        presets = load_presets()
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(sorted(presets)) or 'none'}")
        values.update(presets[preset])
        values["preset"] = preset
    values.update(overrides)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    if isinstance(values.get("filters"), dict):
        values["filters"] = build(DataFilter, values["filters"])
    problems, good = [], {}
    for key, value in values.items():  # CLI and MLproject values arrive as strings
        try:
            good[key] = _coerce(value, hints[key])
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    try:  # built even when some values did not convert, to report the others' problems too
        cfg = cls(**good)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(cls.__name__, problems)
    return cfg


def _coerce(value, hint):
    """A string from the command line, MLproject or logged params, as the field's type."""
    typ = _base_type(hint)
    if not isinstance(value, str):
        return value
    if typing.get_origin(typ) is tuple:
        item = typing.get_args(typ)[0]
        return tuple(_coerce(x.strip(), item) for x in value.split(",") if x.strip())
    if typ is bool:
        return parse_bool(value)
    # Only the forms people write on a command line: ASCII digits (not Python's "1_0", full-width "１",
    # "1e23" for an integer), and for a number an optional decimal point and exponent (2e-4).
    if typ is int:
        if not _INT.match(value.strip()):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if typ is float:
        if not _FLOAT.match(value.strip()):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    return value


_INT = re.compile(r"^[+-]?[0-9]+$", re.ASCII)
_FLOAT = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$", re.ASCII)


def from_flat(cls, values: dict):
    """Inverse of `flat`: rebuild a config from logged params (strings), e.g. for `reproduce`.
    Keys the config does not know (params of later jmed versions, or other steps) are ignored;
    "" is unset (None) where a field may be unset."""
    hints = typing.get_type_hints(cls)
    kwargs, nested = {}, {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif head in hints:
            optional = _base_type(hints[head]) is not hints[head]
            kwargs[head] = None if optional and value == "" else _coerce(value, hints[head])
    for head, sub in nested.items():
        if head in hints:
            sub_cls = hints[head]
            sub_hints = typing.get_type_hints(sub_cls)
            kwargs[head] = sub_cls(**{k: _coerce(v, sub_hints[k]) for k, v in sub.items() if k in sub_hints})
    return cls(**kwargs)
