"""JMLE2026-Bench: the 120th medical licensing exam (2026) as one JSON list, with its scorer (benchmark.py)."""

from __future__ import annotations

import re
from pathlib import Path

from jmed import exams
from jmed.readers import Reader
from jmed.records import (
    EXAM_ID,
    LETTERS,
    Dataset,
    Question,
    Sink,
    check_answer,
    check_fields,
    json_records,
    placeholder_choices,
    shown,
    type_name,
)

JMLE_FIELDS = {
    "question_id": str,
    "block": str,
    "number": int,
    "question_type": str,
    "question_text": str,
    "requires_image": bool,
    "answer": list,
}


JMLE_TYPES = ("multiple_choice", "calculation")


_CHOICE_LINE = re.compile(r"^[ \u3000]*([a-z])[ \u3000]+(\S.*?)\s*$")  # JMLE2026: "a　text"


_QUESTION_NO = re.compile(r"^\d+[ \u3000]+")


def split_jmle_choices(text: str) -> tuple[str, tuple[str, ...]] | None:
    """JMLE2026 puts choices in the stem as trailing lines "a　text". -> (stem, choices) or None."""
    lines = text.rstrip().splitlines()
    found: list[tuple[str, str]] = []
    i = len(lines)
    while i > 0:
        line = lines[i - 1]
        m = _CHOICE_LINE.match(line)
        if m:
            found.append((m.group(1), m.group(2)))
        elif line.strip():
            break
        i -= 1
    found.reverse()
    if len(found) < 2 or [letter for letter, _ in found] != list(LETTERS[: len(found)]):
        return None
    stem = _QUESTION_NO.sub("", "\n".join(lines[:i]).strip(), count=1).strip()
    return stem, tuple(t for _, t in found)


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    sink = Sink(ds, str(path))
    for n, obj in json_records(path, sink):
        if not check_fields(obj, JMLE_FIELDS, n, sink):
            continue
        qid = obj["question_id"].strip()
        m = EXAM_ID.match(qid)
        exam = m.group(1) if m else ""
        block, number = obj["block"], obj["number"]
        if m and (block != m.group(2) or number != int(m.group(3))):  # points follow block and number
            sink.error(
                n,
                "block" if block != m.group(2) else "number",
                f"{qid}: block {shown(block)} and number {number} contradict the id (block {m.group(2)}, "
                f"number {int(m.group(3))})",
            )
            continue
        context = _jmle_context(obj, n, sink)
        if context is None:
            continue
        no_prompt = ""
        if obj["question_type"] == "calculation":
            stem, choices = _QUESTION_NO.sub("", obj["question_text"].strip(), count=1), ()
        else:
            parsed = split_jmle_choices(obj["question_text"])
            if parsed is None:  # choices laid out in a table (120C-71, 120F-14): graded, never prompted
                no_prompt = "choices_unparsed"
                stem = _QUESTION_NO.sub("", obj["question_text"].strip(), count=1)
                choices = placeholder_choices([[str(a).strip().lower() for a in obj["answer"]]], "表中")
                sink.warn(
                    n,
                    "question_text",
                    f"{qid}: its choices could not be parsed from the text (a table?): "
                    "scored, but left out wherever a prompt is needed",
                )
            else:
                stem, choices = parsed
        answer = check_answer(obj["answer"], len(choices), n, sink)
        if answer is None:
            continue
        select = obj.get("num_choices_to_select")
        if choices and select is not None and len(answer) == 1 and select != len(answer[0]):
            sink.error(
                n,
                "answer",
                f"num_choices_to_select is {select} but the answer has {len(answer[0])} "
                f"letter(s): {','.join(answer[0])}",
            )
            continue
        ds.items.append(
            Question(
                id=qid,
                stem=f"{context.strip()}\n{stem}" if context else stem,
                choices=choices,
                answer=answer,
                # required blocks B and E: questions 26-50 are 3-point clinical questions (as in IgakuQA)
                points=3.0 if block in ("B", "E") and number > 25 else 1.0,
                block=block,
                exam=exam,
                year=exams.exam_year(exam),
                text_only=not obj["requires_image"],
                source="jmle2026",
                no_prompt=no_prompt,
                file=str(path),
                line=n,
            )
        )


def _jmle_context(obj: dict, n: int, sink: Sink) -> str | None:
    """The shared case text of a serial question group ("" for none); None after an error. Also checks
    the fields `check_fields` cannot: question_type's values and num_choices_to_select's type."""
    if obj["question_type"] not in JMLE_TYPES:
        sink.error(n, "question_type", f"{shown(obj['question_type'])} is not one of {', '.join(JMLE_TYPES)}")
        return None
    select = obj.get("num_choices_to_select")
    if select is not None and (isinstance(select, bool) or not isinstance(select, int) or select < 1):
        sink.error(n, "num_choices_to_select", f"expected an integer of at least 1, got {shown(select)}")
        return None
    group = obj.get("serial_group")
    if group is None:
        return ""
    if not isinstance(group, dict):
        sink.error(n, "serial_group", f"expected an object or null, got {type_name(group)}")
        return None
    context = group.get("context_text", "")
    if not isinstance(context, str):
        sink.error(n, "serial_group.context_text", f"expected a string, got {type_name(context)}")
        return None
    return context


def official(question, text: str) -> tuple[str, ...] | None:
    """JMLE2026-Bench's scorer (benchmark.py): the rest of the line after 「【回答】」; a calculation answer as
    is; otherwise markdown marks removed, split on commas, 「、」 and spaces, the single letters a-e kept."""
    m = re.search(r"【回答】\s*(.+)", text)
    if not m:
        return None
    answer = m.group(1).strip()
    if question.numeric:
        return (answer,)
    tokens = re.split(r"[,、\s]+", re.sub(r"[*_`#]", "", answer).strip())
    letters = sorted({t.lower() for t in tokens if re.fullmatch(r"[a-eA-E]", t)})
    return tuple(letters) or None


READER = Reader(
    name="jmle2026",
    answer_text=lambda q: "【回答】" + ",".join(q.answer[0]),
    help="JMLE2026-Bench: a JSON list of the 120th exam's questions",
    read=read,
    detect=lambda p: p.suffix == ".json" or p.head.lstrip().startswith("["),
    priority=80,
    official=official,
    fields=frozenset(JMLE_FIELDS) | {"clinical_images", "num_choices_to_select", "serial_group"},
)
