"""Questions/s of jmed's evaluation engines against lm-evaluation-harness on the same model and questions.

Both run in this process on the same model object (--model: tiny, or smollm2-135m for real scale), the same rendered prompts and the same batch size:
- loglik, letters: igakuqa prompts, choices scored as the letters a-e (lm-eval `multiple_choice`);
- loglik, text:    alpaca_med prompts, choices scored as their text (lm-eval `multiple_choice`);
- letter:          greedy generation of up to 16 tokens (lm-eval `generate_until`).
lm-eval gets its tasks as YAML configs in a temp folder, reading a local JSONL; task loading is
outside the timed part (only `lm_eval.evaluator.evaluate` is timed). Runs alternate, best of --repeats;
wall time and process CPU time are both reported (CPU time is steadier on a shared machine).

    .venv/bin/python benchmarks/eval_throughput.py [--model tiny] [--questions 200] [--batch-size 16] [--repeats 3]

Needs the `bench` extra (lm-eval). Questions: IgakuQA 2018-2022 from ../shared/datasets when present
(text-only, 5 choices), else the bundled sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{{{{prompt}}}}"
doc_to_target: {target}
{choice}target_delimiter: ""
{generation}metric_list:
  - metric: {metric}
"""


def questions(n: int):
    from jmed.config import DataFilter
    from jmed.data import SAMPLE_TEST, SAMPLE_TRAIN, load_questions

    shared = ROOT.parent / "shared" / "datasets" / "igakuqa" / "data"
    flt = DataFilter(text_only=True, five_choices=True)
    if shared.exists():
        qs = load_questions(shared, filters=flt)
    else:
        qs = load_questions(SAMPLE_TEST, filters=flt) + load_questions(SAMPLE_TRAIN, filters=flt)
    # lm-eval's multiple_choice picks one choice: single-answer questions only, for a like-for-like run.
    return [q for q in qs if len(q.answer) == 1 and q.n_answers == 1][:n]


def write_tasks(folder: Path, qs, tokenizer) -> None:
    from jmed.prompts import LETTERS, render

    data = {}
    for fmt in ("igakuqa", "alpaca_med"):
        path = folder / f"{fmt}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for q in qs:
                fh.write(
                    json.dumps(
                        {
                            "id": q.id,
                            "prompt": render(q, fmt, (), tokenizer).prompt,
                            "letters": list(LETTERS[:5]),
                            "choices": list(q.choices),
                            "gold": LETTERS.index(q.answer[0][0]),
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        data[fmt] = path
    specs = {
        "jmed_ll_letters": dict(
            data=data["igakuqa"],
            output_type="multiple_choice",
            target="gold",
            choice='doc_to_choice: "{{letters}}"\n',
            generation="",
            metric="acc",
        ),
        "jmed_ll_text": dict(
            data=data["alpaca_med"],
            output_type="multiple_choice",
            target="gold",
            choice='doc_to_choice: "{{choices}}"\n',
            generation="",
            metric="acc",
        ),
        "jmed_generate": dict(
            data=data["igakuqa"],
            output_type="generate_until",
            target='"{{letters[gold]}}"',
            choice="",
            metric="exact_match",
            generation="generation_kwargs:\n  until: []\n  max_gen_toks: 16\n  do_sample: false\n",
        ),
    }
    for name, spec in specs.items():
        (folder / f"{name}.yaml").write_text(TASK.format(name=name, **spec), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny, smollm2-135m, gemma3-270m, a folder or HF id")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import logging

    import torch
    from lm_eval.evaluator import evaluate as lm_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from jmed import evaluate as E
    from jmed.models import load_base

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    model, tokenizer, info = load_base(args.model, precision="fp32")
    model.eval()
    qs = questions(args.questions)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device="cpu", max_length=2048)
    cases = [
        ("loglik, letters", "jmed_ll_letters", "loglik", "igakuqa"),
        ("loglik, text", "jmed_ll_text", "loglik", "alpaca_med"),
        ("letter (generate)", "jmed_generate", "letter", "igakuqa"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        write_tasks(Path(tmp), qs, tokenizer)
        tm = TaskManager(include_path=tmp, include_defaults=False)
        best: dict = {}
        agree: dict = {}
        for rep in range(args.repeats + 1):  # round 0 warms up both
            for label, task, protocol, fmt in cases:
                t0, c0 = time.perf_counter(), time.process_time()
                res = E.run_questions(
                    model, tokenizer, qs, protocol, fmt, 0, "lenient", args.batch_size, 16, desc=f"jmed {label}"
                )
                jm, jc = time.perf_counter() - t0, time.process_time() - c0
                task_dict = tm.load([task])
                t0, c0 = time.perf_counter(), time.process_time()
                with torch.inference_mode():
                    out = lm_evaluate(lm, task_dict, bootstrap_iters=0, log_samples=True, verbosity="ERROR")
                le, lc = time.perf_counter() - t0, time.process_time() - c0
                if rep == 0:
                    if protocol == "loglik":
                        theirs = {s["doc"]["id"]: bool(s["acc"]) for s in out["samples"][task]}
                        ours = {r["id"]: r["correct"] for r in res["rows"]}
                        agree[label] = sum(theirs[i] == ours[i] for i in ours) / len(ours)
                    continue
                b = best.setdefault(label, [float("inf")] * 4)
                best[label] = [min(b[0], jm), min(b[1], le), min(b[2], jc), min(b[3], lc)]
    n = len(qs)
    print(
        f"\njmed evaluate vs lm-evaluation-harness: {n} questions, {args.model} ({info['revision'][:19]}), "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    print(f"{'protocol':<20}{'jmed q/s':>10}{'lm-eval q/s':>13}{'ratio':>8}{'ratio (CPU time)':>18}  agreement")
    for label, (jm, le, jc, lc) in best.items():
        agreement = f"{agree[label]:.1%} same correct/incorrect" if label in agree else ""
        print(f"{label:<20}{n / jm:>10.1f}{n / le:>13.1f}{le / jm:>7.2f}x{lc / jc:>17.2f}x  {agreement}")


if __name__ == "__main__":
    main()
