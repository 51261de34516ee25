"""Near-duplicate (leakage) check between 10,000 training and 2,000 test questions (jmed.checks).

    .venv/bin/python benchmarks/leakage.py [--train 10000] [--test 2000] [--threshold 90] [--repeats 3] [--bruteforce]

Stems: the real IgakuQA 2018-2022 stems from ../shared/datasets when present (else the bundled
sample), resampled with random edits to the wanted sizes; 50 test stems are planted as light edits of
training stems, so the check must find at least those. Times `jmed.checks.leakage_pairs` (an exact
character-multiset bound as a matrix product, then rapidfuzz `process.cdist` with score_cutoff on the
candidates, all cores) and prints pairs found and pairs per second; --bruteforce also times cdist on
every pair and checks that both give the same pairs.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jmed import checks, data  # noqa: E402
from jmed.data import Question  # noqa: E402

PLANTED = 50


def mutate(rng: random.Random, text: str, edits: int) -> str:
    chars = list(text)
    for _ in range(edits):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            chars[i] = chr(0x4E00 + rng.randrange(2000))
        elif op < 0.7:
            del chars[i]
        else:
            chars.insert(i, chr(0x3041 + rng.randrange(80)))
        if not chars:
            chars = ["。"]
    return "".join(chars)


def make(i: int, stem: str, prefix: str) -> Question:
    return Question(id=f"{prefix}{i}", stem=stem, choices=("1", "2", "3", "4", "5"), answer=(("a",),))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=checks.LEAKAGE_THRESHOLD)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bruteforce", action="store_true", help="also time process.cdist over every pair")
    args = ap.parse_args()
    shared = ROOT.parent / "shared" / "datasets" / "igakuqa" / "data"
    source = shared if shared.exists() else data.SAMPLE_TRAIN
    base = [q.stem for q in data.load_questions(source)]
    rng = random.Random(0)
    # new questions: real stems with heavy edits (about 40 % of characters), far from each other
    pool = [mutate(rng, s, max(8, len(s) * 2 // 5)) for s in (rng.choice(base) for _ in range(args.train + args.test))]
    train = [make(i, s, "T") for i, s in enumerate(pool[: args.train])]
    test = [make(i, s, "S") for i, s in enumerate(pool[args.train :])]
    for k in range(PLANTED):  # light edits of training stems: must be found
        src = train[rng.randrange(len(train))]
        test[k] = make(k, mutate(rng, src.stem, 1), "S")
    lengths = sorted(len(q.stem) for q in train)
    print(
        f"leakage check: {len(train):,} train x {len(test):,} test stems (source {source.name}, median "
        f"{lengths[len(lengths) // 2]} chars), threshold {args.threshold:g}, {os.cpu_count()} CPUs"
    )
    checks.leakage_pairs(train[:100], test[:100], args.threshold)  # import rapidfuzz/numpy outside the timing
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        pairs = checks.leakage_pairs(train, test, args.threshold)
        times.append(time.perf_counter() - t)
    found = {p["test_id"] for p in pairs}
    planted = sum(1 for k in range(PLANTED) if f"S{k}" in found)
    best = min(times)
    print(
        f"time: best {best:.2f} s, all {', '.join(f'{t:.2f}' for t in times)} s; "
        f"{len(train) * len(test) / best / 1e6:.1f} M pairs/s"
    )
    print(f"pairs >= {args.threshold:g}: {len(pairs)}; planted near-duplicates found: {planted}/{PLANTED}")
    if args.bruteforce:
        t = time.perf_counter()
        brute = checks.leakage_pairs_bruteforce(train, test, args.threshold)
        took = time.perf_counter() - t
        same = brute == [(p["train_id"], p["test_id"], p["score"]) for p in pairs]
        print(f"brute force process.cdist over every pair: {took:.2f} s, same pairs: {same}")


if __name__ == "__main__":
    main()
