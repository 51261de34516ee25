"""YakugakuQA (github EQUES-Inc/pharma-LLM-eval, data/): the national pharmacist exam, 97th-109th
(2012-2024), <exam>-<block>.jsonl in IgakuQA's schema with choice numbers as answers, categories in
metadata_<exam>.jsonl. Its own scorer is check.py: a response is right when it equals the stored answer
list joined by "," (`",".join(answer)`), character for character.

How its answers are read (each rule names itself in a warning; README "YakugakuQA rulings"):

- choice numbers ("3", ["2", "5"]) are choices 1..n; "IMAGES" choices (a figure) are numbered figure
  choices, as many as the exam's 5 or the highest answer number, whichever is more (100B017: 1 and 6);
- "解なし" anywhere in the answer (MHLW announced no correct answer, 104D002, 109F045 …): excluded,
  counted as ``ds.skipped["no_answer"]``;
- "any k of" (annotated): an answer such as ["1", "2（いずれか一つを選択で正解とする）"] (101A021, 105F014)
  or ["1", "2", "3（いずれか2つを選択で正解とする）"] is every k-subset of the listed numbers, each one
  accepted alone: "1" and "2" are right for 101A021, "1,2" is not (the stem asks for one);
- ``multiple_correct`` (not annotated): the stem asks for k (「1つ選べ」) but the answer lists more than k
  numbers (103D029, 104C040, 105B019): MHLW's ruling for such a question accepts any k of them, read like
  the annotated case and warned about;
- an answer stored out of order (105D032 ["4", "3"]) is the set {3, 4}, warned about;
- ``blank_stem``: a question whose text is blank in the data (105A049, 105A053) is kept and graded by
  `score` (check.py counts it) and left out, counted, wherever a prompt is needed (`Question.no_prompt`).

Categories: metadata_<exam>.jsonl keys are the exam-wide question number (097091, 1-345) and the block
files number each block from 1 (097B001 is question 91); the blocks are the exam's sessions in order
(BLOCK_OFFSETS), checked against the whole-year file, which numbers its questions exam-wide.

Official parsing (`official`) is check.py's rule: the stored answer string exactly, or the choice numbers
in ascending order joined by "," ("2,5"), which is the stored string of every answer stored in order.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from pathlib import Path

from jmed import exams
from jmed.readers import Reader
from jmed.records import (
    IGAKUQA_FIELDS,
    IGAKUQA_KNOWN,
    LETTERS,
    DataError,
    Dataset,
    Question,
    Sink,
    check_choices,
    check_fields,
    check_points,
    data_files,
    folder_year,
    read_jsonl,
    shown,
)

# YakugakuQA (the pharmacist exam; github EQUES-Inc/pharma-LLM-eval): data/<year>/<exam>-<block>.jsonl in
# IgakuQA's schema with answers as choice numbers ("3"), "IMAGES" where the choices are a figure,
# metadata_<exam>.jsonl (exam-wide numbers, no block) and a whole-year <exam>.jsonl repeating the blocks.
# Block-local numbers are zero-padded and at most 90 (block A): "103A001". IgakuQA's 3-digit question
# numbers ("901A100") are not zero-padded, so they never look like YakugakuQA ids.
YAKUGAKU_ID = re.compile(r"^(\d{3})([A-F])(0\d{2})$")

# The exam's six sessions as the data's blocks: (questions before it, its size). A = 必須 1-90, B and C =
# 理論 91-150 and 151-195, D, E, F = 実践 196-245, 246-285 and 286-345 (the 97th exam on: 345 questions).
# Checked against every whole-year file of the data (97th-109th: 4,485 questions, the same text, choices
# and answer under <exam><offset + number>).
BLOCK_OFFSETS = {"A": (0, 90), "B": (90, 60), "C": (150, 45), "D": (195, 50), "E": (245, 40), "F": (285, 60)}

_YAKU_ANY = re.compile(r"いずれか\s*([0-9１-９一二三四五])\s*つ")
_ASKED = re.compile(r"([0-9一二三四五])\s*つ\s*選\s*べ")  # 「2つ選べ」, after NFKC
_KANJI = "一二三四五"

# The answer as stored, by (file, line), where it is not the choice numbers in ascending order ("4,3", an
# "any k of" note): check.py's right answer is that string. A Question has no field for it; `official`
# and `answer_text` look here.
_STORED: dict[tuple[str, int], str] = {}


def _count(s: str) -> int:
    return _KANJI.find(s) + 1 or int(unicodedata.normalize("NFKC", s))


def asked(stem: str) -> int | None:
    """How many choices the stem asks for (the last 「kつ選べ」), or None where it does not say."""
    found = _ASKED.findall(unicodedata.normalize("NFKC", stem))
    return _count(found[-1]) if found else None


def _yakugakuqa_answer(items: list, n_choices: int, n: int, sink: Sink, pid: str = "", stem: str = ""):
    """Choice numbers -> answer sets; "（いずれか2つを選択で正解とする）" or more numbers than the stem asks
    for -> every such k-subset; "解なし" -> "none"."""
    text = "".join(str(a) for a in items)
    if "解なし" in text:
        return "none"
    digits = [m.group(0) for m in (re.match(r"\d+", str(a).strip()) for a in items) if m]
    if not digits or len(digits) != len(items):
        sink.error(n, "answer", f'expected choice numbers such as ["3"], got {shown(items)}')
        return None
    numbers = [int(d) for d in digits]
    bad = [d for d in numbers if not 1 <= d <= n_choices]
    if bad:
        sink.error(n, "answer", f"choice number {bad[0]} outside {n_choices} choices")
        return None
    if len(set(numbers)) != len(numbers):
        sink.error(n, "answer", f"choice number repeated in {shown(items)}")
        return None
    if numbers != sorted(numbers):
        sink.warn(
            n,
            "answer",
            f"{pid}: answer {shown(items)} stored out of order: read as the set "
            f"{{{', '.join(map(str, sorted(numbers)))}}}; check.py takes only "
            f"{shown(','.join(items))} as right, jmed's official parsing both orders",
        )
    letters = sorted(LETTERS[d - 1] for d in numbers)
    m = _YAKU_ANY.search(text)
    if m:
        return tuple(itertools.combinations(letters, _count(m.group(1))))
    k = asked(stem)
    if k is not None and len(numbers) > k:
        sink.warn(
            n,
            "answer",
            f"{pid}: multiple_correct: the stem asks for {k} but the answer lists "
            f"{len(numbers)} choices {shown(items)}: more correct choices than asked (MHLW "
            f"accepts any {k} of them); read as any {k} of {', '.join(map(str, sorted(numbers)))}",
        )
        return tuple(itertools.combinations(letters, k))
    return (tuple(letters),)


def _category_key(exam: str, block: str, number: str) -> str | None:
    """The metadata key of a block question: the exam and its exam-wide number (103B001 -> 103091)."""
    offset, size = BLOCK_OFFSETS[block]
    return f"{exam}{offset + int(number):03d}" if 1 <= int(number) <= size else None


def _metadata(path: Path, ds: Dataset) -> dict[str, dict]:
    """metadata_<exam>.jsonl by problem_id; its rows repeat (four times up to the 105th): the first row
    of an id is kept, and a later one that says another category is warned about."""
    meta: dict[str, dict] = {}
    sink = Sink(ds, str(path))
    for n, obj in read_jsonl(path, sink):
        key = str(obj.get("problem_id"))
        if key not in meta:
            meta[key] = obj
        elif obj.get("category") != meta[key].get("category"):
            sink.warn(
                n,
                "category",
                f"{key}: {shown(obj.get('category'))} where an earlier row says "
                f"{shown(meta[key].get('category'))}: the first row is kept",
            )
    return meta


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    sink = Sink(ds, str(path))
    for key in [k for k in _STORED if k[0] == str(path)]:
        del _STORED[key]
    meta_path = path.with_name(f"metadata_{path.stem.split('-')[0]}.jsonl")
    meta = _metadata(meta_path, ds) if meta_path.is_file() else {}
    year_of_folder = folder_year(path)
    no_category = []
    for n, obj in read_jsonl(path, sink):
        if not check_fields(obj, {**IGAKUQA_FIELDS, "choices": (list, str)}, n, sink):
            continue
        pid = obj["problem_id"].strip()
        m = YAKUGAKU_ID.match(pid)
        if not m:
            sink.error(n, "problem_id", f"{shown(pid)} is not a YakugakuQA id such as 103A001")
            continue
        answers = [str(a) for a in obj["answer"]]
        # every answer number, not just the first: figure choices must cover 100B017's "6"
        top = max((int(mm.group(0)) for mm in (re.match(r"\d+", a.strip()) for a in answers) if mm), default=5)
        if isinstance(obj["choices"], str):  # "IMAGES": the choices are a figure; their numbers still count
            if obj["choices"] != "IMAGES":
                sink.error(n, "choices", f'expected a list or "IMAGES", got {shown(obj["choices"])}')
                continue
            choices = tuple(f"（選択肢{i}は図）" for i in range(1, max(5, top) + 1))
        else:
            choices = check_choices(obj["choices"], n, sink)
            if choices is None:
                continue
        answer = _yakugakuqa_answer(answers, len(choices), n, sink, pid, obj["problem_text"])
        if answer == "none":
            ds.skipped.setdefault("no_answer", []).append(pid)
            sink.warn(n, "answer", f"{pid}: {shown(answers)}: no correct answer (解なし); excluded")
            continue
        points = check_points(obj["points"], n, sink)
        if answer is None or points is None:
            continue
        stored = ",".join(answers)
        if stored != ",".join(str(LETTERS.index(a) + 1) for a in answer[0]):
            _STORED[(str(path), n)] = stored
        no_prompt = ""
        if not obj["problem_text"].strip():  # 105A049, 105A053 as published: graded, never prompted
            no_prompt = "blank_stem"
            sink.warn(
                n,
                "problem_text",
                f"{pid}: blank_stem: the data has no question text: scored, but left out wherever a prompt is needed",
            )
        exam, block, number = m.groups()
        key = _category_key(exam, block, number)
        row = meta.get(key) if key else None
        if meta and row is None:
            no_category.append(pid)
        ds.items.append(
            Question(
                id=pid,
                stem=obj["problem_text"],
                choices=choices,
                answer=answer,
                points=points,
                block=block,
                exam=exam,
                year=year_of_folder or exams.exam_year(exam, "pharmacist"),
                text_only=obj["text_only"] and not isinstance(obj["choices"], str),
                category=str((row or {}).get("category", "")),
                source="yakugakuqa",
                exam_kind="pharmacist",
                no_prompt=no_prompt,
                file=str(path),
                line=n,
            )
        )
    if no_category:
        sink.warn(
            0,
            "category",
            f"{len(no_category)} question(s) without a row in {meta_path.name} under their "
            f"exam-wide number ({no_category[0]} …): no category",
        )


def files(folder: Path, ds: Dataset) -> list[Path]:
    """YakugakuQA's whole-year <exam>.jsonl repeats its block files: read the blocks, say so once."""
    out = []
    for f in data_files(folder) if folder.is_dir() else [folder]:
        blocks = sorted(f.parent.glob(f"{f.stem}-[A-F].jsonl")) if re.fullmatch(r"\d{3}", f.stem) else []
        if blocks:
            ds.warnings.append(
                DataError(
                    str(f),
                    0,
                    "",
                    f"whole-year file repeating {len(blocks)} block files "
                    f"({blocks[0].name} …): skipped, the blocks are read",
                )
            )
        else:
            out.append(f)
    return out


def answer_text(question) -> str:
    """The gold answer as check.py reads it right: the answer as stored, joined by "," ("2,5"; 105D032 "4,3")."""
    if not question.answer:
        return ""
    return _STORED.get((question.file, question.line)) or ",".join(
        str(LETTERS.index(a) + 1) for a in sorted(question.answer[0])
    )


def official(question, text: str) -> tuple[str, ...] | None:
    """YakugakuQA's scorer (check.py): the response equals the stored answer joined by "," ("2,3"). Read
    as letters: that string exactly (105D032's "4,3", an "any k of" answer with its note) is the gold;
    otherwise the choice numbers in ascending order joined by "," ("2,3"; one of an "any k of" answer's
    k-subsets, "1" for 101A021); anything else is unparsed, as check.py never matches it."""
    stored = _STORED.get((question.file, question.line))
    if stored is not None and text == stored and question.answer:
        return question.answer[0]
    if not re.fullmatch(r"[1-9](?:,[1-9])*", text):
        return None
    numbers = [int(d) for d in text.split(",")]
    if numbers != sorted(set(numbers)) or numbers[-1] > len(question.choices):
        return None
    return tuple(LETTERS[d - 1] for d in numbers)


READER = Reader(
    name="yakugakuqa",
    answer_text=answer_text,
    help="YakugakuQA (EQUES-Inc/pharma-LLM-eval data/): the pharmacist exam",
    read=read,
    detect=lambda p: p.obj is not None and bool(YAKUGAKU_ID.match(str(p.obj.get("problem_id", "")))),
    priority=60,
    official=official,
    files=files,
    fields=IGAKUQA_KNOWN | {"comment", "note"},
)
