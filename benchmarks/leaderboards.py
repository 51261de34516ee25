"""Published leaderboard totals, re-scored by `jmed score --parsing official` from each leaderboard's own
published answers, side by side with the totals it publishes (questions, correct, points).

    .venv/bin/python benchmarks/leaderboards.py --jmle2026 <JMLE2026-Bench checkout> --igakuqa119 <IgakuQA119 checkout> \
        --igakuqa <IgakuQA checkout>

- JMLE2026-Bench (github naoto-iwase/JMLE2026-Bench): every results/*.json, `raw_response` as the
  prediction and `reasoning` as the reasoning field, against its jmle2026_dataset.json; published figures
  are the file's own `summary` (correct, score, score_max) and `metadata.total_questions`.
- IgakuQA119 (github docto-rin/IgakuQA119): every results/**/<tag>_grading_results.csv, `model_answer` as
  the prediction, against the checkout as published (no --exclude-ids); published figures are the
  全体 section of <tag>_summary.txt.

- IgakuQA (github jungokasai/IgakuQA): every baseline_results/<year>/<exam>-<block>_<model>.jsonl,
  against its data/<year>; the reference figures are its scripts/evaluate_main.py rule, restated here
  (sorted split on "," equal to the sorted gold; 116A71 correct for all; 112B30 a or d), per model and
  year: (questions, correct, points, total).

Prints one line per model (OK when all three figures are equal) and exits 1 if any differs. Checkouts
are not part of jmed (fetch them yourself); nothing is downloaded here.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def jmle2026(root: Path, tmp: Path):
    for f in sorted((root / "results").glob("*.json")):
        if not f.stat().st_size:
            continue  # a file the checkout holds only as a pointer
        d = json.loads(f.read_text(encoding="utf-8"))
        records = [
            {
                "problem_id": r["question_id"],
                "prediction": r.get("raw_response") or "",
                **({"reasoning": r["reasoning"]} if r.get("reasoning") else {}),
            }
            for r in d["results"]
        ]
        s = d["summary"]
        yield (
            f.stem,
            root / "jmle2026_dataset.json",
            _write(tmp / f"{f.stem}.jsonl", records),
            (d["metadata"]["total_questions"], s["correct"], s["score"], s["score_max"]),
        )


_TOTAL = re.compile(r"--- 全体 ---\s*正解数/問題数: (\d+) / (\d+)\s*正答率: [\d.]+%\s*獲得点/満点: (\d+) / (\d+)")


def igakuqa119(root: Path, tmp: Path):
    for f in sorted((root / "results").rglob("*_grading_results.csv")):
        tag = f.name.removesuffix("_grading_results.csv")
        rows = list(csv.DictReader(f.open(encoding="utf-8-sig")))
        records = [{"problem_id": r["question_number"], "prediction": r["model_answer"]} for r in rows]
        m = _TOTAL.search(f.with_name(f"{tag}_summary.txt").read_text(encoding="utf-8"))
        correct, n, points, total = map(int, m.groups())
        yield tag, root, _write(tmp / f"{tag}.jsonl", records), (n, correct, points, total)


def _reference(pred: str, gold: dict) -> bool:
    """IgakuQA's scripts/evaluate_main.py, restated: its whole rule."""
    got = sorted(pred.split(","))
    if gold["problem_id"] == "116A71":
        return True
    if gold["problem_id"] == "112B30" and got in (["a"], ["d"]):
        return True
    return got == sorted(gold["answer"])


def igakuqa(root: Path, tmp: Path):
    def lines(f: Path) -> list[dict]:
        return [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]

    groups: dict[tuple[str, str], list[Path]] = {}
    for f in sorted((root / "baseline_results").glob("*/*.jsonl")):
        block, model = f.stem.split("_", 1)
        groups.setdefault((f.parent.name, model), []).append(f)
    for (year, model), files in sorted(groups.items()):
        records, ref = [], [0, 0, 0, 0]
        for f in files:
            golds = {g["problem_id"]: g for g in lines(root / "data" / year / f"{f.stem.split('_', 1)[0]}.jsonl")}
            for p in lines(f):
                g = golds[p["problem_id"]]
                ok = _reference(p["prediction"], g)
                ref = [ref[0] + 1, ref[1] + ok, ref[2] + int(g["points"]) * ok, ref[3] + int(g["points"])]
                records.append({"problem_id": p["problem_id"], "prediction": p["prediction"]})
        if ref[0] != 400:  # a model answered only some blocks (the translated runs): score those blocks only
            continue
        yield f"{model} {year}", root / "data" / year, _write(tmp / f"{model}-{year}.jsonl", records), tuple(ref)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jmle2026", type=Path)
    ap.add_argument("--igakuqa119", type=Path)
    ap.add_argument("--igakuqa", type=Path)
    args = ap.parse_args()
    from jmed.score import score

    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in (
            ("JMLE2026-Bench", args.jmle2026 and jmle2026(args.jmle2026, Path(tmp))),
            ("IgakuQA119", args.igakuqa119 and igakuqa119(args.igakuqa119, Path(tmp))),
            ("IgakuQA baselines", args.igakuqa and igakuqa(args.igakuqa, Path(tmp))),
        ):
            if not source:
                continue
            print(f"{name}: model, jmed (questions, correct, points/total), published")
            for model, data, preds, published in source:
                s, _, _ = score(str(data), str(preds), parsing="official")
                got = (s["questions"], s["correct"], s["points"], s["points_total"])
                bad += got != published
                print(
                    f"  {'OK ' if got == published else 'BAD'} {model}: {got[0]} q, {got[1]} correct, "
                    f"{got[2]}/{got[3]} | published {published[0]} q, {published[1]} correct, "
                    f"{published[2]}/{published[3]}"
                )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
