"""The medLLM QA benchmark (github aistairc/medLLM_QA_benchmark): IgakuQA's schema per set, with its own
scorer (scripts/evaluate_main.py)."""

from __future__ import annotations

from pathlib import Path

from jmed.readers import Reader
from jmed.readers.igakuqa import read_schema
from jmed.records import IGAKUQA_FIELDS, IGAKUQA_KNOWN, Dataset

# The medLLM QA benchmark (github aistairc/medLLM_QA_benchmark): IgakuQA's schema per set, with integer
# ids (MedQA, MMLU, CMExam), PubMedQA's `context` (the abstract the question is about) and DenQA (the
# dental exam) answers "NA" for questions without an official answer.
MEDLLM_FIELDS = {**IGAKUQA_FIELDS, "problem_id": (str, int), "answer": (list, str)}
MEDLLM_SETS = {"denqa": "dental", "igakuqa": "medical", "jjsimqa": "medical"}  # file stem -> exam kind; others "other"
# Its files, by stem, wherever they sit: what tells its sets apart (its ids and fields do not always). Its
# igakuqa.jsonl is IgakuQA's 30 block files joined byte for byte, so only the name differs from IgakuQA's
# `<exam>-<block>.jsonl`: read as the benchmark (its scorer's rules) unless an `igakuqa_metadata.jsonl`
# beside it makes it an IgakuQA file. Its jjsimqa.jsonl (the only JJSIMQA there is)
# is read as `jjsimqa`, whose official parser is this scorer too.
MEDLLM_FILES = {
    "denqa",
    "igakuqa",
    "mmlu_en_medical",
    "medmcqa",
    "medqa_en",
    "medqa_en_4op",
    "pubmedqa",
    "cmexam",
    "medqa_zh",
    "medqa_zh_4op",
}


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    kind = MEDLLM_SETS.get(path.stem.lower(), "other")
    read_schema(
        path,
        ds,
        "medllm",
        translate,
        kind=kind,
        fields=MEDLLM_FIELDS,
        numbered=kind in ("medical", "dental"),
        metadata=False,
        context=True,
    )


def is_benchmark_file(path: Path) -> bool:
    stem = path.stem.lower()
    return stem in MEDLLM_FILES and not (stem == "igakuqa" and path.with_name(path.stem + "_metadata.jsonl").exists())


def detect(p) -> bool:
    obj = p.obj
    return obj is not None and (
        is_benchmark_file(p.path)
        or "context" in obj
        or (isinstance(obj.get("problem_id"), int) and not isinstance(obj.get("problem_id"), bool))
    )


def official(question, text: str) -> tuple[str, ...] | None:
    """The medLLM QA benchmark's scorer (scripts/evaluate_main.py): NFKC, 「、」 and 「，」 read as ",", split
    on ",", each item stripped, sorted; equal to the gold list. (Its 116A71 rule is keyed by id alone, so it
    also credits the dental exam's 116A71; jmed keys corrections by exam kind and does not.)"""
    from jmed.metrics import normalize

    items = sorted(p.strip() for p in normalize(text).replace("、", ",").replace("，", ",").split(","))
    return tuple(items) if any(items) else None


READER = Reader(
    name="medllm",
    help="the medLLM QA benchmark (aistairc/medLLM_QA_benchmark): its sets' JSONL",
    read=read,
    detect=detect,
    priority=50,
    official=official,
    fields=IGAKUQA_KNOWN | {"context"},
)
