"""The model registry (DESIGN.md §6): log the served model, register versions, promote a champion.

- `log_serving_model(adapter_dir, ...)`: the pyfunc of jmed/serving.py, logged as code (nothing pickled).
- `register(client, eval_run, ...)`: a version of `jmed-<slug>` with lineage tags and a readable description.
- `decide(...)`: the pure promotion decision (table-driven tests); `promote(...)` applies it per base model
  with the aliases `champion` and `previous`, under a lock, and logs a `jmed.step=promote` run.
- `serve(...)` / `predict_file(...)`: `jmed serve` and `jmed predict`.

Concurrency guarantee: for a local store (sqlite file or ./mlruns folder) the whole read-decide-apply
sequence of one base model runs under an OS file lock (fcntl.flock) beside the store, so concurrent
promote processes are serialised and each decides on what the previous one left. For a remote store
the lock is a lease tag on the registered model (best effort: two writers racing within milliseconds
could both take it), and right before moving `champion` the alias is re-read and the decision is taken
again if it changed (compare-and-set); `champion` then only moves to a version that beats the version
it points to at that moment.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CHAMPION = "champion"
PREVIOUS = "previous"
SECONDARY = {"eval/accuracy": "eval/score", "eval/score": "eval/accuracy",
             "eval/gestalt_accuracy": "eval/gestalt", "eval/exact_match": "eval/gestalt"}
EVAL_KEYS = ("eval_data_digest", "protocol", "prompt_format", "shots")
LINEAGE_METRICS = ("eval/accuracy", "eval/score", "eval/required_score", "eval/exact_match", "eval/gestalt",
                   "eval/gestalt_accuracy", "eval/unparsed")


def model_name(base_slug: str) -> str:
    return f"jmed-{base_slug}"


# ---- the pure decision --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A FINISHED evaluate run of an adapter."""

    eval_run: str
    train_run: str
    evaluation: tuple  # (eval_data_digest, protocol, prompt_format, shots)
    metric: float | None
    secondary: float | None = None
    start_time: int = 0  # ms; newer wins a full tie
    version: str | None = None  # registered version holding this eval run, if any


@dataclass(frozen=True)
class Champion:
    version: str
    eval_run: str
    train_run: str
    evaluation: tuple
    metric: float | None


@dataclass(frozen=True)
class Decision:
    action: str  # "promote" (move champion to candidate) | "keep" | "none" (no candidate at all)
    candidate: Candidate | None
    champion: Champion | None
    register: bool  # the candidate must be registered first
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"action": self.action, "register": self.register, "reasons": list(self.reasons),
                "candidate": asdict(self.candidate) if self.candidate else None,
                "champion": asdict(self.champion) if self.champion else None}


def describe_evaluation(evaluation: tuple) -> str:
    digest, protocol, fmt, shots = (list(evaluation) + ["?"] * 4)[:4]
    return f"data {str(digest)[:12]}, protocol {protocol}, format {fmt}, shots {shots}"


def _rank(c: Candidate):
    sec = c.secondary if c.secondary is not None else float("-inf")
    return (c.metric, sec, c.start_time, c.eval_run)


def decide(candidates: list[Candidate], champion: Champion | None, metric: str = "eval/accuracy",
           min_delta: float = 0.0) -> Decision:
    """Which candidate (if any) becomes champion. Pure: same inputs, same decision and reasons.

    Candidates are compared only on one evaluation (same data digest, protocol, prompt format, shots):
    the champion's, or, without a champion, the evaluation of the newest candidate. The best is the
    highest `metric`, then the higher secondary metric, then the newer run. It becomes champion only if
    there is none or it beats the champion's `metric` by more than `min_delta`.
    """
    reasons: list[str] = []
    scored = [c for c in candidates if c.metric is not None]
    if len(scored) < len(candidates):
        reasons.append(f"{len(candidates) - len(scored)} evaluate run(s) without metric {metric} ignored")
    if not scored:
        reasons.append("no evaluated adapter to consider")
        return Decision("none", None, champion, False, tuple(reasons))
    if champion is not None:
        target = tuple(champion.evaluation)
    else:
        target = tuple(max(scored, key=lambda c: (c.start_time, c.eval_run)).evaluation)
    same = [c for c in scored if tuple(c.evaluation) == target]
    others = len(scored) - len(same)
    if champion is not None and not same:
        reasons.append(
            f"champion v{champion.version} was evaluated on another evaluation ({describe_evaluation(target)}) "
            f"than all {len(scored)} candidate(s); not compared blindly — evaluate its adapter "
            f"(train run {champion.train_run}) on the same data and settings, then promote again")
        return Decision("keep", None, champion, False, tuple(reasons))
    if others:
        reasons.append(f"{others} candidate(s) evaluated on another evaluation than "
                       f"({describe_evaluation(target)}) not compared")
    best = max(same, key=_rank)
    ties = [c for c in same if c.metric == best.metric and c is not best]
    what = f"eval run {best.eval_run} (train run {best.train_run}) {metric}={best.metric:.6g}"
    if ties:
        reasons.append(f"{len(ties) + 1} candidates tie on {metric}={best.metric:.6g}; "
                       "chosen by secondary metric, then the newer run")
    register = best.version is None
    if champion is None:
        reasons.append(f"no champion yet: {what} becomes champion")
        return Decision("promote", best, None, register, tuple(reasons))
    if best.train_run == champion.train_run or best.eval_run == champion.eval_run:
        reasons.append(f"champion v{champion.version} is already the best: {what}")
        return Decision("keep", best, champion, False, tuple(reasons))
    if champion.metric is None:
        reasons.append(f"champion v{champion.version} has no {metric}; {what} replaces it")
        return Decision("promote", best, champion, register, tuple(reasons))
    delta = best.metric - champion.metric
    if delta > min_delta:
        reasons.append(f"{what} beats champion v{champion.version} ({champion.metric:.6g}) "
                       f"by {delta:.6g} > min_delta {min_delta:g}")
        return Decision("promote", best, champion, register, tuple(reasons))
    reasons.append(f"best candidate {what} does not beat champion v{champion.version} "
                   f"({champion.metric:.6g}) by more than min_delta {min_delta:g} (delta {delta:.6g})")
    return Decision("keep", best, champion, False, tuple(reasons))
