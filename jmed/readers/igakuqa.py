"""IgakuQA (github jungokasai/IgakuQA): the medical licensing exam 2018-2022, data/<year>/<exam>-<block>.jsonl
with `<exam>-<block>_metadata.jsonl` (year, category, contraindicated choices) and optional
`_translate.jsonl` English versions. Its official parser is the reference scorer's: split on ",", sort,
compare (jmed.metrics). The schema reader here is shared by JJSIMQA and the medLLM QA benchmark."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from jmed import exams
from jmed.readers import Reader
from jmed.records import (
    EXAM_ID,
    IGAKUQA_FIELDS,
    IGAKUQA_KNOWN,
    LETTERS,
    Dataset,
    Question,
    Sink,
    check_answer,
    check_choices,
    check_fields,
    check_points,
    folder_year,
    read_jsonl,
    shown,
    type_name,
)


def _metadata(path: Path, ds: Dataset) -> dict[str, tuple[int, dict]]:
    meta_path = path.with_name(path.stem + "_metadata.jsonl")
    if not meta_path.exists():
        return {}
    sink = Sink(ds, str(meta_path))
    out: dict[str, tuple[int, dict]] = {}
    for n, obj in read_jsonl(meta_path, sink):
        pid = obj.get("problem_id")
        if not isinstance(pid, str) or not pid:
            sink.error(n, "problem_id", "missing field" if pid is None else f"expected a string, got {type_name(pid)}")
            continue
        if "kinki" in obj and not (isinstance(obj["kinki"], list) and all(isinstance(k, str) for k in obj["kinki"])):
            sink.error(n, "kinki", f"expected a list of letters, got {type_name(obj['kinki'])}")
            continue
        if "year" in obj and (not isinstance(obj["year"], int) or isinstance(obj["year"], bool)):
            sink.error(n, "year", f"expected an integer year, got {type_name(obj['year'])}")
            continue
        if pid in out:
            sink.error(n, "problem_id", f"duplicate id {shown(pid)} (first at line {out[pid][0]})")
            continue
        out[pid] = (n, obj)
    return out


def _translations(path: Path, ds: Dataset) -> dict[str, dict]:
    tr_path = path.with_name(path.stem + "_translate.jsonl")
    if not tr_path.exists():
        Sink(ds, str(path)).error(0, "", f"translation requested but {tr_path.name} is absent")
        return {}
    return {obj.get("problem_id"): obj for _, obj in read_jsonl(tr_path, Sink(ds, str(tr_path)))}


def read_schema(
    path: Path,
    ds: Dataset,
    source: str,
    translate: bool = False,
    *,
    kind: str = "medical",
    fields: dict = IGAKUQA_FIELDS,
    numbered: bool = True,
    metadata: bool = True,
    context: bool = False,
) -> None:
    """IgakuQA's JSONL schema (also JJSIMQA's and the medLLM QA benchmark's), with
    `<name>_metadata.jsonl` joined in when `metadata`. `numbered`: ids are exam ids (116A1: exam, block); `context`: a `context` field (PubMedQA's
    abstract) goes before the question."""
    sink = Sink(ds, str(path))
    meta = _metadata(path, ds) if metadata else {}
    trans = _translations(path, ds) if translate else {}
    year_of_folder = folder_year(path)
    accept_any = exams.get(kind).accept_any
    seen = set()  # every id the file names, valid or not: a metadata row for none of them is an error
    for n, obj in read_jsonl(path, sink):
        seen.add(str(obj.get("problem_id", "")).strip())
        if not check_fields(obj, fields, n, sink):
            continue
        pid = str(obj["problem_id"]).strip()
        if isinstance(obj["answer"], str):  # medLLM: "NA" where the exam has no official answer
            if obj["answer"].strip().upper() != "NA":
                sink.error(n, "answer", f'expected a list of letters or "NA", got {shown(obj["answer"])}')
                continue
            ds.skipped.setdefault("no_answer", []).append(pid)
            sink.warn(n, "answer", f'{pid}: answer "NA" (no official answer); excluded')
            continue
        if context and obj.get("context"):
            if not isinstance(obj["context"], str):
                sink.error(n, "context", f"expected a string, got {type_name(obj['context'])}")
                continue
            obj = {**obj, "problem_text": f"{obj['context'].strip()}\n\n{obj['problem_text']}"}  # PubMedQA's abstract
        choices = check_choices(obj["choices"], n, sink)
        if choices is None:
            continue
        answer = check_answer(obj["answer"], len(choices), n, sink)
        points = check_points(obj["points"], n, sink)
        if answer is None or points is None:
            continue
        stem = obj["problem_text"]
        if pid in trans:
            stem = trans[pid].get("problem_text_en", stem)
            choices = tuple(trans[pid].get("choices_en", choices))
        m = EXAM_ID.match(pid) if numbered else None
        exam, block = (m.group(1), m.group(2)) if m else ("", "")
        mline, mobj = meta.get(pid, (0, {}))
        kinki: list[str] = []
        for k in mobj.get("kinki", []):  # full-width "ｂ" is b; "cde" in one entry means c, d and e
            k = unicodedata.normalize("NFKC", k).strip().lower()
            kinki.extend(k) if k.isalpha() else kinki.append(k)
        bad = [k for k in kinki if k not in LETTERS[: len(choices)]]
        if bad:
            Sink(ds, str(path.with_name(path.stem + "_metadata.jsonl"))).error(
                mline, "kinki", f'letter "{bad[0]}" outside {len(choices)} choices of {pid}'
            )
            continue
        year = mobj.get("year") or year_of_folder or exams.exam_year(exam, kind)
        ds.items.append(
            Question(
                id=pid,
                stem=stem,
                choices=choices,
                answer=answer,
                points=points,
                block=block,
                exam=exam,
                year=year,
                text_only=obj["text_only"],
                kinki=tuple(sorted(set(kinki))),
                kinki_known="kinki" in mobj,
                category=str(mobj.get("category", "")),
                source=source,
                accept_any=pid in accept_any,
                exam_kind=kind,
                file=str(path),
                line=n,
            )
        )
    orphans = [(line, pid) for pid, (line, _) in meta.items() if pid not in seen]
    meta_sink = Sink(ds, str(path.with_name(path.stem + "_metadata.jsonl")))
    for line, pid in orphans:  # its question would silently lose the category and contraindications it meant
        meta_sink.error(line, "problem_id", f"{shown(pid)} is no question of {path.name}")


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    read_schema(path, ds, "igakuqa", translate)


READER = Reader(
    name="igakuqa",
    help="IgakuQA JSONL (and any file in its schema: the fallback for JSON lines)",
    read=read,
    detect=lambda p: p.obj is not None or p.suffix == ".jsonl",
    priority=0,
    fields=IGAKUQA_KNOWN,
)
