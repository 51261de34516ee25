"""IgakuQA119 (github docto-rin/IgakuQA119): the 119th medical licensing exam (2025) and its scorer."""

from __future__ import annotations

import re
from pathlib import Path

from jmed import exams
from jmed.readers import Reader
from jmed.records import (
    EXAM_ID,
    LETTERS,
    NUMERIC,
    Dataset,
    Question,
    Sink,
    check_answer,
    check_choices,
    check_fields,
    json_records,
    placeholder_choices,
    read_text,
    shown,
    walk,
)

# IgakuQA119's own scorer accepts a or c for 119E28 (its answer file says "ac").
ALTERNATIVES = {"119E28": (("a",), ("c",))}


# IgakuQA119 (github docto-rin/IgakuQA119): questions/119A_json.json … (a JSON list of {number, question,
# choices ["a. …"], has_image}), answers in results/correct_answers.csv (問題番号,解答; letters written
# together, "ce"; numbers for numeric entry). Points as its scorer: 3 for blocks B/E questions 26-50.
IGAKUQA119_FILE = re.compile(r"^\d{3}[A-F]_json\.json$")


MISSING_CHOICE = "（原文で欠落：前後の選択肢と結合）"  # a label the source lost by merging two choices


_LABEL = re.compile(r"^\s*([a-z])[.．]\s*")


def _igakuqa119_answers(path: Path, sink: Sink) -> dict[str, tuple[int, str]] | None:
    """{question number: (line, answer)} from the correct_answers.csv beside the questions (same folder,
    its parent, or ../results/); None (an error naming where it looked) when there is none."""
    import csv

    places = [
        path.parent / "correct_answers.csv",
        path.parent.parent / "correct_answers.csv",
        path.parent.parent / "results" / "correct_answers.csv",
    ]
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        sink.error(0, "", "IgakuQA119 answers not found: looked for " + ", ".join(str(p) for p in places))
        return None
    text = read_text(found, Sink(sink.ds, str(found)))
    if text is None:
        return None
    rows = list(csv.reader(text.splitlines()))
    return {r[0].strip(): (n, r[1].strip()) for n, r in enumerate(rows[1:], 2) if len(r) >= 2 and r[0].strip()}


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    sink = Sink(ds, str(path))
    answers = _igakuqa119_answers(path, sink)
    if answers is None:
        return
    for n, obj in json_records(path, sink):
        if not check_fields(obj, {"number": str, "question": str, "choices": list, "has_image": bool}, n, sink):
            continue
        qid = obj["number"].strip()
        m = EXAM_ID.match(qid)
        if not m:
            sink.error(n, "number", f"{shown(qid)} is not a question number such as 119A1")
            continue
        raw = check_choices(obj["choices"], n, sink)
        if raw is None:
            continue
        labels = [(_LABEL.match(c).group(1) if _LABEL.match(c) else "") for c in raw]
        texts = [_LABEL.sub("", c, count=1).strip() for c in raw]
        if raw and labels != list(LETTERS[: len(raw)]):
            # merged in the source: place each choice at its label so answer letters still point right
            sink.warn(
                n,
                "choices",
                f"{qid}: choice labels {''.join(lb or '?' for lb in labels)} are not a, b, c, …: "
                f"choices merged in the source; letters are kept, choice texts may be garbled",
            )
            if all(labels) and len(set(labels)) == len(labels):
                slots = {lb: t for lb, t in zip(labels, texts)}
                texts = [slots.get(lb, MISSING_CHOICE) for lb in LETTERS[: LETTERS.index(max(labels)) + 1]]
        elif raw and len(raw) != 5:
            sink.warn(n, "choices", f"{qid}: {len(raw)} choices where the exam has 5: merged in the source?")
        if qid not in answers:
            sink.error(n, "number", f"{qid} has no answer in correct_answers.csv")
            continue
        line, gold = answers[qid]
        no_prompt = ""
        if not texts and not NUMERIC.match(gold):  # 119E45, 119E48: the choices sit inside the question text
            no_prompt = "choices_unparsed"
            texts = list(placeholder_choices([list(gold.lower())], "問題文中"))
            sink.warn(
                n,
                "choices",
                f"{qid}: no choice list but a letter answer ({gold}): the choices are inside "
                "the question text; scored, but left out wherever a prompt is needed",
            )
        if not obj["question"].strip():  # 119C18 as published: graded like every question, never prompted
            no_prompt = no_prompt or "blank_stem"
            sink.warn(n, "question", f"{qid}: blank question text: scored, but left out wherever a prompt is needed")
        if qid in ALTERNATIVES:
            answer = ALTERNATIVES[qid]
        elif not texts:
            answer = check_answer([gold], 0, n, sink)
        else:
            answer = check_answer([gold] if "," in gold else list(gold.lower()), len(texts), n, sink)
        if answer is None:
            continue
        exam, block, number = m.group(1), m.group(2), int(m.group(3))
        ds.items.append(
            Question(
                id=qid,
                stem=obj["question"].strip(),
                choices=tuple(texts),
                answer=answer,
                points=3.0 if block in ("B", "E") and 26 <= number <= 50 else 1.0,
                block=block,
                exam=exam,
                year=exams.exam_year(exam),
                text_only=not obj["has_image"],
                source="igakuqa119",
                no_prompt=no_prompt,
                file=str(path),
                line=n,
            )
        )


def question_files(path: Path) -> list[Path]:
    return sorted(folder / n for folder, names in walk(path) for n in names if IGAKUQA119_FILE.match(n))


def official(question, text: str) -> tuple[str, ...] | None:
    """IgakuQA119's own scorer (src/grading_logic.py): lower case; "[", "]", "," and spaces removed; the
    characters sorted; equal to the gold answer so treated. Numbers are compared the same way, as it does."""

    def canon(s: str) -> str:
        return "".join(sorted(s.strip().lower().replace("[", "").replace("]", "").replace(",", "").replace(" ", "")))

    got = canon(text)
    if not got:
        return None
    for gold in question.answer:  # 119E28's "a or c" is two acceptable sets, as its scorer's special rule
        if got == canon("".join(gold)):
            return gold
    if question.numeric:
        return (got,)
    return tuple(got) if all(ch in LETTERS[: len(question.choices)] for ch in got) else None


def detect(p) -> bool:
    return bool(IGAKUQA119_FILE.match(p.path.name) or re.search(r'"number"\s*:\s*"\d{3}[A-F]\d+"', p.head))


READER = Reader(
    name="igakuqa119",
    answer_text=lambda q: "".join(q.answer[0]),
    help="IgakuQA119 (docto-rin/IgakuQA119): a checkout, or its questions/ files",
    read=read,
    detect=detect,
    priority=100,
    official=official,
    files=lambda folder, ds: question_files(folder) if folder.is_dir() else [folder],
    folder=lambda folder: bool(question_files(folder)),
    fields=frozenset({"number", "question", "choices", "has_image"}),
)
