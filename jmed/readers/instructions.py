"""Instruction records for training (`{"instruction", "input"?, "output", "id"?}` JSON lines)."""

from __future__ import annotations

from pathlib import Path

from jmed.readers import Reader
from jmed.records import Dataset, InstructionRecord, Sink, check_fields, read_jsonl, type_name, visible

INSTRUCTION_FIELDS = {"instruction": str, "output": str}


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    sink = Sink(ds, str(path))
    for n, obj in read_jsonl(path, sink):
        if not check_fields(obj, INSTRUCTION_FIELDS, n, sink):
            continue
        inp = obj.get("input", "")
        if not isinstance(inp, str):
            sink.error(n, "input", f"expected a string, got {type_name(inp)}")
            continue
        empty = [k for k in ("instruction", "output") if not visible(obj[k]).strip()]
        if empty:
            sink.error(n, empty[0], "empty value")
            continue
        rid = str(obj.get("id") or f"{path.stem}-{n}")
        ds.items.append(InstructionRecord(obj["instruction"], inp, obj["output"], id=rid, file=str(path), line=n))


READER = Reader(
    name="instructions",
    help="instruction records for training (instruction, input, output)",
    read=read,
    detect=lambda p: p.obj is not None and "instruction" in p.obj and "output" in p.obj,
    priority=70,
    questions=False,
    fields=frozenset(INSTRUCTION_FIELDS) | {"input", "id"},
)
