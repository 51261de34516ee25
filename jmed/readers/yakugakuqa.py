"""YakugakuQA (github EQUES-Inc/pharma-LLM-eval, data/): the national pharmacist exam, 97th-109th
(2012-2024), <exam>-<block>.jsonl in IgakuQA's schema with choice numbers as answers, categories in
metadata_<exam>.jsonl. Its own scorer is check.py."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from jmed import exams
from jmed.readers import Reader
from jmed.records import (
    IGAKUQA_FIELDS, LETTERS, DataError, Dataset, Question, Sink, check_choices, check_fields, check_points,
    data_files, folder_year, read_jsonl, shown,
)

# YakugakuQA (the pharmacist exam; github EQUES-Inc/pharma-LLM-eval): data/<year>/<exam>-<block>.jsonl in
# IgakuQA's schema with answers as choice numbers ("3"), "IMAGES" where the choices are a figure,
# metadata_<exam>.jsonl (ids without the block) and a whole-year <exam>.jsonl repeating the block files.
YAKUGAKU_ID = re.compile(r"^(\d{3})([A-F])(\d{3})$")


_YAKU_ANY = re.compile(r"いずれか\s*([0-9１-９一二三四五])\s*つ")


def _yakugakuqa_answer(items: list, n_choices: int, n: int, sink: Sink):
    """Choice numbers -> answer sets; "（いずれか2つを選択で正解とする）" -> every such pair; "解なし" -> "none"."""
    import itertools

    text = "".join(str(a) for a in items)
    if "解なし" in text:
        return "none"
    digits = [m.group(0) for m in (re.match(r"\d+", str(a).strip()) for a in items) if m]
    if not digits or len(digits) != len(items):
        sink.error(n, "answer", f"expected choice numbers such as [\"3\"], got {shown(items)}")
        return None
    bad = [d for d in digits if not 1 <= int(d) <= n_choices]
    if bad:
        sink.error(n, "answer", f"choice number {bad[0]} outside {n_choices} choices")
        return None
    letters = sorted(LETTERS[int(d) - 1] for d in digits)
    m = _YAKU_ANY.search(text)
    if m:
        k = "一二三四五".find(m.group(1)) + 1 or int(unicodedata.normalize("NFKC", m.group(1)))
        return tuple(itertools.combinations(letters, k))
    return (tuple(letters),)


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    sink = Sink(ds, str(path))
    meta_path = path.with_name(f"metadata_{path.stem.split('-')[0]}.jsonl")
    meta = {str(o.get("problem_id")): o for _, o in read_jsonl(meta_path, Sink(ds, str(meta_path)))} \
        if meta_path.is_file() else {}
    year_of_folder = folder_year(path)
    for n, obj in read_jsonl(path, sink):
        if not check_fields(obj, {**IGAKUQA_FIELDS, "choices": (list, str)}, n, sink):
            continue
        pid = obj["problem_id"].strip()
        m = YAKUGAKU_ID.match(pid)
        if not m:
            sink.error(n, "problem_id", f"{shown(pid)} is not a YakugakuQA id such as 103A001")
            continue
        answers = [str(a) for a in obj["answer"]]
        top = max((int(d) for d in re.findall(r"^\d+", " ".join(answers), re.M)), default=5)
        if isinstance(obj["choices"], str):  # "IMAGES": the choices are a figure; their numbers still count
            if obj["choices"] != "IMAGES":
                sink.error(n, "choices", f"expected a list or \"IMAGES\", got {shown(obj['choices'])}")
                continue
            choices = tuple(f"（選択肢{i}は図）" for i in range(1, max(5, top) + 1))
        else:
            choices = check_choices(obj["choices"], n, sink)
            if choices is None:
                continue
        answer = _yakugakuqa_answer(answers, len(choices), n, sink)
        if answer == "none":
            ds.skipped.setdefault("no_answer", []).append(pid)
            sink.warn(n, "answer", f"{pid}: {shown(answers)}: no correct answer (解なし); excluded")
            continue
        points = check_points(obj["points"], n, sink)
        if answer is None or points is None:
            continue
        exam, block, number = m.groups()
        ds.items.append(Question(
            id=pid, stem=obj["problem_text"], choices=choices, answer=answer, points=points, block=block, exam=exam,
            year=year_of_folder or exams.exam_year(exam, "pharmacist"),
            text_only=obj["text_only"] and not isinstance(obj["choices"], str),
            category=str(meta.get(exam + number, {}).get("category", "")), source="yakugakuqa",
            exam_kind="pharmacist", file=str(path), line=n))


def files(folder: Path, ds: Dataset) -> list[Path]:
    """YakugakuQA's whole-year <exam>.jsonl repeats its block files: read the blocks, say so once."""
    out = []
    for f in data_files(folder) if folder.is_dir() else [folder]:
        blocks = sorted(f.parent.glob(f"{f.stem}-[A-F].jsonl")) if re.fullmatch(r"\d{3}", f.stem) else []
        if blocks:
            ds.warnings.append(DataError(str(f), 0, "", f"whole-year file repeating {len(blocks)} block files "
                                                        f"({blocks[0].name} …): skipped, the blocks are read"))
        else:
            out.append(f)
    return out


def official(question, text: str) -> tuple[str, ...] | None:
    """YakugakuQA's scorer (check.py): the response equals the choice numbers joined by "," ("2,3")."""
    if not re.fullmatch(r"[1-9](?:,[1-9])*", text):
        return None
    numbers = [int(d) for d in text.split(",")]
    if numbers != sorted(set(numbers)) or numbers[-1] > len(question.choices):
        return None
    return tuple(LETTERS[d - 1] for d in numbers)


READER = Reader(name="yakugakuqa",
                answer_text=lambda q: ",".join(str(LETTERS.index(a) + 1) for a in sorted(q.answer[0])), help="YakugakuQA (EQUES-Inc/pharma-LLM-eval data/): the pharmacist exam",
                read=read, detect=lambda p: p.obj is not None and bool(YAKUGAKU_ID.match(str(p.obj.get("problem_id", "")))),
                priority=60, official=official, files=files)
