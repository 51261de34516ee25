"""The pure promotion decision: candidates, the champion and `decide`, with no store access (table-driven tests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

CHAMPION = "champion"


PREVIOUS = "previous"


@dataclass(frozen=True)
class Candidate:
    """A FINISHED evaluate run of an adapter."""

    eval_run: str
    train_run: str
    evaluation: tuple  # (eval_data_digest, protocol, prompt_format, shots, engine)
    metric: float | None
    secondary: float | None = None
    start_time: int = 0  # ms; newer wins a full tie
    version: str | None = None  # registered version holding this eval run, if any
    data: str = ""  # its data as a person reads it (jmed.identity: name, count, selection, digest)


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
        return {
            "action": self.action,
            "register": self.register,
            "reasons": list(self.reasons),
            "candidate": asdict(self.candidate) if self.candidate else None,
            "champion": asdict(self.champion) if self.champion else None,
        }


def describe_evaluation(evaluation: tuple, data: str = "") -> str:
    """An evaluation in words; `data`, its readable data label, replaces the bare digest when known."""
    digest, protocol, fmt, shots, engine = (list(evaluation) + ["?"] * 5)[:5]
    return f"data {data or str(digest)[:12]}, protocol {protocol}, format {fmt}, shots {shots}, engine {engine}"


def _described(evaluation: tuple, candidates: list[Candidate]) -> str:
    """describe_evaluation with the data label of any candidate measured on it."""
    data = next((c.data for c in candidates if tuple(c.evaluation) == tuple(evaluation) and c.data), "")
    return describe_evaluation(evaluation, data)


def _rank(c: Candidate):
    sec = c.secondary if c.secondary is not None else float("-inf")
    return (c.metric, sec, c.start_time, c.eval_run)


def on_evaluation(champion: Champion | None, candidates: list[Candidate], evaluation: tuple) -> Champion | None:
    """The champion as measured on `evaluation`: its adapter's newest evaluate run there when one exists
    (a champion is ranked by its adapter, whichever run measured it), else unchanged."""
    if champion is None or tuple(champion.evaluation) == tuple(evaluation):
        return champion
    there = [
        c
        for c in candidates
        if c.train_run == champion.train_run and tuple(c.evaluation) == tuple(evaluation) and c.metric is not None
    ]
    if not there:
        return champion
    best = max(there, key=lambda c: (c.start_time, c.eval_run))
    return Champion(champion.version, best.eval_run, champion.train_run, tuple(evaluation), best.metric)


def decide(
    candidates: list[Candidate],
    champion: Champion | None,
    metric: str = "eval/accuracy",
    min_delta: float = 0.0,
    evaluation: tuple | None = None,
) -> Decision:
    """Which candidate (if any) becomes champion. Pure: same inputs, same decision and reasons.

    Candidates are compared only on one evaluation (same data digest, protocol, prompt format, shots):
    `evaluation`, the one the registered model declares (`jmed promote --evaluation`); without one, the
    champion's, or, without a champion, the evaluation of the newest candidate. The champion counts with
    its adapter's result on that evaluation (`on_evaluation`). The best is the highest `metric`, then the
    higher secondary metric, then the newer run. It becomes champion only if there is none or it beats
    the champion's `metric` by more than `min_delta`.
    """
    reasons: list[str] = []
    scored = [c for c in candidates if c.metric is not None]
    if len(scored) < len(candidates):
        reasons.append(f"{len(candidates) - len(scored)} evaluate run(s) without metric {metric} ignored")
    if not scored:
        reasons.append("no evaluated adapter to consider")
        return Decision("none", None, champion, False, tuple(reasons))
    if evaluation:
        target = tuple(evaluation)
    elif champion is not None:
        target = tuple(champion.evaluation)
    else:
        target = tuple(max(scored, key=lambda c: (c.start_time, c.eval_run)).evaluation)
    champion = on_evaluation(champion, scored, target)
    same = [c for c in scored if tuple(c.evaluation) == target]
    others = [
        c
        for c in scored
        if tuple(c.evaluation) != target  # the champion's own runs elsewhere do not compete
        and (champion is None or c.train_run != champion.train_run)
    ]
    switch = (
        (
            f"`jmed promote --evaluation {max(others, key=lambda c: (c.start_time, c.eval_run)).eval_run}` ranks on "
            "the newest of theirs (the champion is re-evaluated there)"
        )
        if others
        else ""
    )
    if champion is not None and tuple(champion.evaluation) != target:
        reasons.append(
            f"champion v{champion.version} has no evaluation on the ranking evaluation ({_described(target, candidates)}); "
            f"not compared blindly: `jmed promote --evaluation <an eval run on that data>` evaluates it there and "
            f"compares"
        )
        return Decision("keep", None, champion, False, tuple(reasons))
    if not same:
        reasons.append(
            f"no candidate was evaluated on the ranking evaluation ({_described(target, candidates)}); {switch}"
        )
        return Decision("keep", None, champion, False, tuple(reasons))
    if others:
        reasons.append(
            f"{len(others)} candidate(s) evaluated on another evaluation than the ranking one "
            f"({_described(target, candidates)}) not compared; {switch}"
        )
    best = max(same, key=_rank)
    ties = [c for c in same if c.metric == best.metric and c is not best]
    what = f"eval run {best.eval_run} (train run {best.train_run}) {metric}={best.metric:.6g}"
    if ties:
        reasons.append(
            f"{len(ties) + 1} candidates tie on {metric}={best.metric:.6g}; "
            "chosen by secondary metric, then the newer run"
        )
    register = best.version is None
    if champion is None:
        reasons.append(f"no champion yet: {what} becomes champion")
        return Decision("promote", best, None, register, tuple(reasons))
    if best.train_run == champion.train_run or best.eval_run == champion.eval_run:
        reasons.append(f"champion v{champion.version} is already the best: {what}")
        return Decision("keep", best, champion, False, tuple(reasons))
    if register:
        reasons.append(f"{what} is not a registered version yet: registered")
    if champion.metric is None:
        reasons.append(f"champion v{champion.version} has no {metric}; {what} replaces it")
        return Decision("promote", best, champion, register, tuple(reasons))
    delta = best.metric - champion.metric
    if delta > min_delta:
        reasons.append(
            f"{what} beats champion v{champion.version} ({champion.metric:.6g}) "
            f"by {delta:.6g} > min_delta {min_delta:g}"
        )
        return Decision("promote", best, champion, register, tuple(reasons))
    reasons.append(
        f"best candidate {what} does not beat champion v{champion.version} "
        f"({champion.metric:.6g}) by more than min_delta {min_delta:g} (delta {delta:.6g})"
    )
    return Decision("keep", best, champion, register, tuple(reasons))


SECONDARY = {
    "eval/accuracy": "eval/score",
    "eval/score": "eval/accuracy",
    "eval/gestalt_accuracy": "eval/gestalt",
    "eval/exact_match": "eval/gestalt",
}
