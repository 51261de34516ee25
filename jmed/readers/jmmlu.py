"""JMMLU (nlp-waseda/JMMLU) and JMMLU-Med (sociocom/JMED-LLM): 4-choice CSV rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from jmed.readers import Reader
from jmed.records import Dataset, Question, Sink, read_text, shown, text_ok

JMMLU_COLUMNS = ("question", "optionA", "optionB", "optionC", "optionD", "answer")


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    """JMMLU / JMED-LLM CSV: question, optionA-D, answer (A-D); optional tag -> category."""
    sink = Sink(ds, str(path))
    text = read_text(path, sink)
    if text is None:
        return
    reader = csv.reader(io.StringIO(text, newline=""))  # "\r" alone ends a row too (old Excel for Mac)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        sink.error(1, "", f"cannot read the CSV header: {exc}")
        return
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:  # which of the two would be the answer? neither is guessed
        sink.error(1, "header", f"column(s) named twice: {', '.join(twice)}")
        return
    missing = [c for c in JMMLU_COLUMNS if c not in header]
    if missing:
        sink.error(1, "header", f"missing column(s) {', '.join(missing)} (expected {','.join(JMMLU_COLUMNS)})")
        return
    col = {name: header.index(name) for name in header}
    start = reader.line_num + 1
    row_no = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            sink.error(start, "", f"invalid CSV: {exc}")
            break
        n, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        row_no += 1
        if len(row) != len(header):
            sink.error(n, "", f"expected {len(header)} columns, got {len(row)}")
            continue
        values = {name: row[i].strip() for name, i in col.items()}
        if not text_ok(values, n, sink):
            continue
        empty = [c for c in JMMLU_COLUMNS if not values[c]]
        if empty:
            for c in empty:
                sink.error(n, c, "empty value")
            continue
        letter = values["answer"].upper()
        if len(letter) != 1 or letter not in "ABCD":
            sink.error(n, "answer", f"letter {shown(values['answer'])} outside 4 choices (A-D)")
            continue
        qid = values.get("id") or f"{path.stem}-{row_no}"
        ds.items.append(
            Question(
                id=qid,
                stem=values["question"],
                choices=tuple(values[f"option{c}"] for c in "ABCD"),
                answer=((letter.lower(),),),
                category=values.get("tag", ""),
                source="jmmlu",
                exam_kind="other",
                file=str(path),
                line=n,
            )
        )


READER = Reader(
    name="jmmlu",
    help="JMMLU / JMMLU-Med CSV (question, optionA-D, answer)",
    read=read,
    detect=lambda p: p.suffix == ".csv",
    priority=110,
    fields=frozenset(JMMLU_COLUMNS) | {"tag"},
)
