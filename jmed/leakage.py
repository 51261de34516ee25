"""The train/test near-duplicate (leakage) check: rapidfuzz ratios on normalised stems, with a cheap
character-multiset bound that finds exactly what scoring every pair finds."""

from __future__ import annotations

import re
import unicodedata

LEAKAGE_THRESHOLD = 90.0  # rapidfuzz ratio (0-100) on normalised stems
# What a near-duplicate between training and test data does: `warn` lists each pair and what to do and
# goes on (published exams repeat question patterns across years, and the papers evaluate on them as
# they are); `fail` makes each pair an error, so validation (and a pipeline before training) stops.
# An exact duplicate with the same choices is an error under either.
LEAKAGE_POLICIES = ("warn", "fail")
DEFAULT_LEAKAGE = "warn"


def norm_stem(text: str) -> str:
    """NFKC, whitespace removed: the form in which stems are compared."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


_BOUND_DIM = 2048  # hashed features of the character-multiset bound


def _char_bags(texts: list[str], dim: int = _BOUND_DIM):
    """Hashed (character, k-th occurrence) features: (0/1 matrix of occupied buckets, surplus per text).

    Two texts share at most dot(rows) + min(surplus a, surplus b) such features, where a text's surplus
    is its number of features minus its occupied buckets (features that collided); and the characters
    two texts share as multisets bound their longest common subsequence from above."""
    import numpy as np

    bags = np.zeros((len(texts), dim), dtype=np.float32)
    surplus = np.zeros(len(texts), dtype=np.float32)
    for i, text in enumerate(texts):
        if not text:
            continue
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        sorted_codes = np.sort(codes)
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
        k = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))  # k-th occurrence
        buckets = (sorted_codes * 1000003 + k * 7919) % dim
        bags[i, buckets] = 1.0
        surplus[i] = len(codes) - np.count_nonzero(bags[i])
    return bags, surplus


def leakage_pairs(train, test, threshold: float = LEAKAGE_THRESHOLD) -> list[dict]:
    """Near-duplicate stems between training and test questions: every pair with a rapidfuzz ratio of
    at least `threshold` (0-100) on normalised stems, with its score, best first.

    Exact and fast: ratio = 200·LCS/(len a + len b), and the LCS is at most the characters two stems share
    as multisets, which a matrix product of hashed character features bounds from above (`_char_bags`).
    Only pairs whose bound reaches the threshold are scored, with rapidfuzz `process.cdist` on each
    block's candidate rows and columns (score_cutoff, all cores)."""
    import numpy as np
    from rapidfuzz import fuzz, process

    if not train or not test:
        return []
    a = [norm_stem(q.stem) for q in train]
    b = [norm_stem(q.stem) for q in test]
    la = np.array([len(x) for x in a], dtype=np.float32)
    lb = np.array([len(x) for x in b], dtype=np.float32)
    (bag_a, sur_a), (bag_b, sur_b) = _char_bags(a), _char_bags(b)
    found: list[tuple[int, int, float]] = []
    block = 2048
    for start in range(0, len(a), block):
        stop = start + block
        shared = bag_a[start:stop] @ bag_b.T + np.minimum(sur_a[start:stop, None], sur_b[None, :])
        shared = np.minimum(shared, np.minimum(la[start:stop, None], lb[None, :]))
        total = la[start:stop, None] + lb[None, :]
        bound = np.where(total > 0, 200.0 * shared / np.maximum(total, 1), 100.0)
        rows, cols = np.nonzero(bound >= threshold - 1e-3)
        if len(rows) == 0:
            continue
        urows, ucols = np.unique(rows), np.unique(cols)
        scores = process.cdist(
            [a[start + i] for i in urows],
            [b[j] for j in ucols],
            scorer=fuzz.ratio,
            score_cutoff=threshold,
            dtype=np.float32,
            workers=-1,
        )
        for r, c in zip(*np.nonzero(scores)):
            found.append((start + int(urows[r]), int(ucols[c]), float(scores[r, c])))
    pairs = []
    for i, j, score in found:
        t, s = train[i], test[j]
        pairs.append(
            {
                "score": round(score, 2),
                "train_id": t.id,
                "test_id": s.id,
                "same_choices": list(t.choices) == list(s.choices),
                "train_file": t.file,
                "train_line": t.line,
                "test_file": s.file,
                "test_line": s.line,
                "train_stem": t.stem[:120],
                "test_stem": s.stem[:120],
            }
        )
    pairs.sort(key=lambda p: (-p["score"], p["train_id"], p["test_id"]))
    return pairs


def leakage_pairs_bruteforce(train, test, threshold: float = LEAKAGE_THRESHOLD) -> list[tuple[str, str, float]]:
    """The same pairs by scoring every pair with `process.cdist` (for tests and the benchmark)."""
    import numpy as np
    from rapidfuzz import fuzz, process

    scores = process.cdist(
        [norm_stem(q.stem) for q in train],
        [norm_stem(q.stem) for q in test],
        scorer=fuzz.ratio,
        score_cutoff=threshold,
        dtype=np.float32,
        workers=-1,
    )
    return sorted(
        ((train[i].id, test[j].id, round(float(scores[i, j]), 2)) for i, j in zip(*np.nonzero(scores))),
        key=lambda p: (-p[2], p[0], p[1]),
    )
