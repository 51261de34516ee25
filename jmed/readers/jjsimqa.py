"""JJSIMQA (aistairc/medLLM_QA_benchmark's jjsimqa.jsonl): self-assessment questions of the Journal of the
Japanese Society of Internal Medicine, in IgakuQA's schema with `choices_orig` and float points. That
benchmark is where JJSIMQA is published, so its scorer (scripts/evaluate_main.py: NFKC, 「、」 as ",", items
stripped and sorted) is JJSIMQA's official parser."""

from __future__ import annotations

import re
from pathlib import Path

from jmed.readers import Reader
from jmed.readers.igakuqa import read_schema
from jmed.readers.medllm import official
from jmed.records import IGAKUQA_KNOWN, Dataset


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    read_schema(path, ds, "jjsimqa", translate, numbered=False, metadata=False)


def detect(p) -> bool:
    return p.obj is not None and (
        "choices_orig" in p.obj or bool(re.match(r"^\d+_\d+-\d+$", str(p.obj.get("problem_id", ""))))
    )


READER = Reader(
    name="jjsimqa",
    help="JJSIMQA JSONL (IgakuQA's schema, float points)",
    read=read,
    detect=detect,
    priority=40,
    official=official,
    fields=IGAKUQA_KNOWN | {"choices_orig"},
)
