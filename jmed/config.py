"""Frozen configuration per step. Defaults live here, once; the CLI, MLproject and tests all build these.

`flat(cfg)` gives the flat dict that is logged as MLflow params (names as in the dataclass).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

PRESETS_FILE = Path(__file__).parent / "presets.yaml"
DEFAULT_LR = {"tiny": 1e-2, "hf": 2e-4}  # AdamW rates when neither a preset nor the user sets one


@dataclass(frozen=True)
class DataFilter:
    """Question filters usable by every step (DESIGN.md §3). Empty tuples mean "no restriction"."""

    text_only: bool = False
    five_choices: bool = False
    scored_only: bool = False
    years: tuple[int, ...] = ()
    blocks: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    exclude_ids: tuple[str, ...] = ()  # e.g. a question `jmed validate` rejects, to use the rest


@dataclass(frozen=True)
class TrainConfig:
    model: str = "tiny"
    train_data: str = ""  # "" -> the bundled sample's train split
    eval_data: str = ""  # optional, for eval loss
    data_format: str = "auto"
    filters: DataFilter = field(default_factory=DataFilter)
    prompt_format: str = "igakuqa"
    shots: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str = ""  # "" -> default by architecture; "all-linear"; or "q_proj,v_proj"
    quantization: str = "none"  # none | 8bit | 4bit (nf4, double quantisation)
    learning_rate: float = 0.0  # 0 -> DEFAULT_LR by model (the presets set the papers' rates)
    lr_schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    max_steps: int = 60  # > 0 wins over epochs
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    overlength: str = "truncate_prompt"  # truncate_prompt | drop | error: examples longer than max_length
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    seed: int = 42
    checkpoint_every: int = 0  # 0 -> no intermediate checkpoints
    resume_from: str = ""  # a train run id to continue
    stop_after: int = 0  # stop (as if interrupted) after this many steps; for resume tests and budgets
    preset: str = ""
    trust_remote_code: bool = False

    def __post_init__(self):
        # A rate that makes the tiny model learn in 60 steps would wreck a real model: resolve by model.
        if not self.learning_rate:
            object.__setattr__(self, "learning_rate", DEFAULT_LR["tiny" if self.model == "tiny" else "hf"])


@dataclass(frozen=True)
class EvalConfig:
    model: str = "tiny"
    adapter: str = ""  # train run id | runs:/… | models:/…
    eval_data: str = ""  # "" -> the bundled sample's test split
    data_format: str = "auto"
    filters: DataFilter = field(default_factory=DataFilter)
    protocol: str = ""  # letter | text | loglik; "" -> the adapter's own, or letter for a bare base
    prompt_format: str = ""  # "" -> the adapter's own, or igakuqa
    parsing: str = "lenient"  # official | lenient
    shots: int = 0
    limit: int = 0  # the first N questions (after filters and sample); 0 = all
    sample: int = 0  # a seeded random subset of N questions (after filters; stable for a seed); 0 = all
    batch_size: int = 8
    max_new_tokens: int = 0  # 0 -> fit the answers: 16 for letters, the longest gold text + 8 for text
    precision: str = "auto"
    quantization: str = "none"
    seed: int = 42
    compare_base: bool = True  # an adapter's evaluation also records its delta against the base


def flat(cfg, prefix: str = "") -> dict:
    """Flatten a config (nested dataclasses become `filters.text_only`, tuples become "a,b")."""
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat(value, f"{prefix}{f.name}."))
        elif isinstance(value, (tuple, list)):
            out[f"{prefix}{f.name}"] = ",".join(str(v) for v in value)
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def load_presets() -> dict:
    import yaml

    if not PRESETS_FILE.exists():
        return {}
    return yaml.safe_load(PRESETS_FILE.read_text(encoding="utf-8")) or {}


def build(cls, overrides: dict | None = None, preset: str = ""):
    """Defaults < preset < explicit overrides (strings are converted to the field types).

    Unknown keys and presets are errors, never ignored."""
    # None and "" mean "not given" (MLflow passes "" for unset parameters), so presets are not overridden
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None and v != ""}
    values: dict = {}
    if preset:
        presets = load_presets()
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(sorted(presets)) or 'none'}")
        values.update(presets[preset])
        values["preset"] = preset
    values.update(overrides)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    if isinstance(values.get("filters"), dict):
        values["filters"] = DataFilter(**values["filters"])
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in values.items():  # CLI and MLproject values arrive as strings
        try:
            values[key] = _coerce(value, hints[key])
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return cls(**values)


def _coerce(value, typ):
    if isinstance(value, str):
        if typ is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"expected true or false, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        if typ in (int, float):
            return typ(value)
    return value


def from_flat(cls, values: dict):
    """Inverse of `flat`: rebuild a config from logged params (strings), e.g. for `reproduce`."""
    import typing

    hints = typing.get_type_hints(cls)
    kwargs, nested = {}, {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif head in hints:
            kwargs[head] = _coerce(value, hints[head])
    for head, sub in nested.items():
        sub_cls = hints[head]
        sub_hints = typing.get_type_hints(sub_cls)
        parsed = {}
        for k, v in sub.items():
            typ = sub_hints[k]
            if typing.get_origin(typ) is tuple:
                item = typing.get_args(typ)[0]
                parsed[k] = tuple(item(x) for x in str(v).split(",") if x != "")
            else:
                parsed[k] = _coerce(v, typ)
        kwargs[head] = sub_cls(**parsed)
    return cls(**kwargs)
