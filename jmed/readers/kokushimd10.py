"""KokushiMD-10 (github juniorliu95/KokushiMD-10, arXiv 2506.11114): ten Japanese national healthcare
licensing exams, 2020-2024, one JSON list per exam session, exams/JA/<profession>/<profession>_<year>_<section>.json
("医師_2020_a.json"), scored by its calculate_scores.py. The data itself is on a model hub; its layout here
is what that scorer reads and what its prompt.py shows the models:

- confirmed by the scorer: a JSON list per file, the year and section only in the file name, and per
  question `index` ("12", "12-1": the number before "-" is the question's number), `answer` (a string,
  "AC"; "" where there is none), `points`, `text_only`, `kinki` (medicine and dentistry: contraindicated
  choices), `human_accuracy`, `corrected_question_index` (its presence: never credited, except in
  medicine) and `answer_sub2` (pharmacy: the subject);
- from prompt.py's question format ({"question": …, "a": …, "b": …} or {"question": …, "1": …, "2": …}):
  the text in `question` and the choices as keys "a", "b", … or "1", "2", … (a `choices` list or
  object is read too). Numbered choices are answered with their numbers ("13"), lettered with letters.

The scorer's answer comparison (`normalize_answer`): everything but ASCII letters and digits removed, the
characters sorted, upper-cased, cut to 6; equal strings are right. That is this reader's official parser.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from jmed import exams
from jmed.readers import Reader
from jmed.records import (
    LETTERS,
    NUMERIC,
    DataError,
    Dataset,
    Question,
    Sink,
    check_choices,
    check_fields,
    check_points,
    data_files,
    json_records,
    shown,
    type_name,
)

# The file-name prefixes (utils.py ROLE_MAP) and the exam kind each is.
PROFESSIONS = {
    "医師": "medical",
    "歯科": "dental",
    "薬剤": "pharmacist",
    "看護": "nurse",
    "保健": "public_health_nurse",
    "助産": "midwife",
    "理学": "physical_therapist",
    "作業": "occupational_therapist",
    "診療": "radiological_technologist",
    "視能": "orthoptist",
}
# The sessions calculate_scores.py reads, in exam order; they become blocks A, B, … in that order
# (the pharmacist exam's six sessions a1-b3 are A-F).
SECTIONS = {
    "医師": ("a", "b", "c", "d", "e", "f"),
    "歯科": ("a", "b", "c", "d"),
    "薬剤": ("a1", "a2", "a3", "b1", "b2", "b3"),
}
FILE = re.compile(rf"^({'|'.join(PROFESSIONS)})_(\d{{4}})_([a-z][0-9]?)\.json$")
FIELDS = {"index": (str, int), "question": str, "answer": str, "points": (str, int, float), "text_only": bool}
_INDEX = re.compile(r"^\d+(?:-[0-9A-Za-z]+)*$")
_LABEL = re.compile(r"^(?:[A-Za-z]|[1-9][0-9]?)$")
_NOT_ALNUM = re.compile(r"[^a-zA-Z0-9]")

# Questions read with numbered choices, by (file, line): their answers are choice numbers, as the
# scorer compares them. A Question has no field for it; the official parser and answer_text look here.
_NUMBERED: set[tuple[str, int]] = set()


def sections(profession: str) -> tuple[str, ...]:
    return SECTIONS.get(profession, ("a", "b"))


def canon(text: str) -> str:
    """calculate_scores.py's normalize_answer: ASCII letters and digits only, sorted, upper-cased, 6 at most."""
    return "".join(sorted(_NOT_ALNUM.sub("", text))).upper()[:6]


def detect(p) -> bool:
    """Its file names; or, renamed, a JSON list whose records carry the scorer's `human_accuracy` and `index`."""
    if FILE.match(p.path.name):
        return True
    return (
        p.suffix == ".json" and p.head.lstrip().startswith("[") and '"human_accuracy"' in p.head and '"index"' in p.head
    )


def _labelled(values: dict, n: int, sink: Sink, fld: str) -> tuple[tuple[str, ...], str] | None:
    """Choices keyed "a", "b", … or "1", "2", … (any order, any case) -> (texts in label order, "letter" | "number")."""
    labels = {str(k).lower(): v for k, v in values.items()}
    numbered = all(k.isdigit() for k in labels)
    order = sorted(labels, key=int) if numbered else sorted(labels)
    if order != ([str(i) for i in range(1, len(order) + 1)] if numbered else list(LETTERS[: len(order)])):
        sink.error(n, fld, f"choice labels {shown(list(values))} are not a, b, c, … or 1, 2, 3, …")
        return None
    texts = check_choices([labels[k] for k in order], n, sink, fld)
    return None if texts is None else (texts, "number" if numbered else "letter")


def _choices(obj: dict, n: int, sink: Sink) -> tuple[tuple[str, ...], str | None] | None:
    """(choices, label style: "letter", "number" or None for an unlabelled list); () for none; None after an error."""
    if "choices" in obj:
        value = obj["choices"]
        if isinstance(value, list):
            texts = check_choices(value, n, sink)
            return None if texts is None else (texts, None)
        if isinstance(value, dict):
            return _labelled(value, n, sink, "choices")
        sink.error(n, "choices", f"expected a list or an object of labelled choices, got {type_name(value)}")
        return None
    keys = {k: v for k, v in obj.items() if _LABEL.match(k)}
    return _labelled(keys, n, sink, "choices") if keys else ((), None)


def _letters(text: str, n_choices: int, style: str | None) -> tuple[tuple[str, ...], str] | str:
    """Letters or choice numbers (cleaned as `canon` does) -> (sorted letters, "letter" | "number"), or
    why they are not choices of this question."""
    if text.isdigit():
        if style == "letter":
            return f"choice numbers {shown(text)} for choices labelled a, b, …"
        if n_choices > 9:
            return f"choice numbers {shown(text)} are ambiguous with {n_choices} choices"
        bad = [d for d in text if not 1 <= int(d) <= n_choices]
        if bad:
            return f"choice number {bad[0]} outside {n_choices} choices"
        letters, found = [LETTERS[int(d) - 1] for d in text], "number"
    elif text.isalpha():
        if style == "number":
            return f"letters {shown(text)} for choices numbered 1, 2, …"
        letters, found = list(text.lower()), "letter"
        bad = [a for a in letters if a not in LETTERS[:n_choices]]
        if bad:
            return f'letter "{bad[0]}" outside {n_choices} choices'
    else:
        return f"{shown(text)} mixes letters and numbers"
    if len(set(letters)) != len(letters):
        return f"repeated choice in {shown(text)}"
    return tuple(sorted(letters)), found


def _kinki(value, n_choices: int, style: str | None, n: int, sink: Sink) -> tuple[str, ...] | None:
    """Contraindicated choices, "A", "AC", ["A", "C"] or "" (none) -> sorted letters; None after an error."""
    if isinstance(value, list) and all(isinstance(k, str) for k in value):
        value = "".join(value)
    if not isinstance(value, str):
        sink.error(n, "kinki", f"expected a string or a list of choices, got {type_name(value)}")
        return None
    text = _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", value))
    if not text:
        return ()
    found = _letters(text, n_choices, style)
    if isinstance(found, str):
        sink.error(n, "kinki", found)
        return None
    return found[0]


def read(path: Path, ds: Dataset, translate: bool = False) -> None:
    sink = Sink(ds, str(path))
    m = FILE.match(path.name)
    if not m:
        sink.error(
            0,
            "",
            "not a KokushiMD-10 file name (<profession>_<year>_<section>.json, e.g. 医師_2020_a.json, "
            f"profession one of {', '.join(PROFESSIONS)}): its year and section come from the name",
        )
        return
    if translate:
        sink.error(
            0,
            "",
            "--translate: KokushiMD-10's English files (exams/EN/) have no published layout; "
            "jmed reads its Japanese files only",
        )
        return
    profession, year, section = m.group(1), int(m.group(2)), m.group(3)
    if section not in sections(profession):
        sink.error(0, "", f"section {section!r} is not one of {profession}'s: {', '.join(sections(profession))}")
        return
    kind = exams.get(PROFESSIONS[profession])
    block = "ABCDEF"[sections(profession).index(section)]
    exam = str(year - kind.year_offset) if kind.year_offset is not None else ""
    for n, obj in json_records(path, sink):
        if not check_fields(obj, FIELDS, n, sink):
            continue
        index = str(obj["index"]).strip()
        if not _INDEX.match(index):
            sink.error(n, "index", f'{shown(obj["index"])} is not a question number such as "12" or "12-1"')
            continue
        qid = f"{path.stem}_{index}"
        found = _choices(obj, n, sink)
        points = check_points(obj["points"], n, sink)
        if found is None or points is None:
            continue
        choices, style = found
        gold = _NOT_ALNUM.sub("", obj["answer"])
        if not gold:  # the scorer credits no answer to it ("correct_answer != ''")
            ds.skipped.setdefault("no_answer", []).append(qid)
            sink.warn(n, "answer", f"{qid}: answer {shown(obj['answer'])} (no answer its scorer can compare); excluded")
            continue
        if "corrected_question_index" in obj and profession != "医師":  # its scorer never credits these
            ds.skipped.setdefault("corrected", []).append(qid)
            sink.warn(
                n,
                "corrected_question_index",
                f"{qid}: marked corrected (採点除外等); its scorer never credits it; excluded",
            )
            continue
        if not choices:
            if not NUMERIC.match(obj["answer"].strip()):
                sink.error(
                    n,
                    "answer",
                    f"{shown(obj['answer'])}: a question without choices needs a number "
                    "(or give its choices: keys a, b, … or 1, 2, …)",
                )
                continue
            answer, style = (obj["answer"].strip(),), "numeric"
        else:
            parsed = _letters(gold, len(choices), style)
            if isinstance(parsed, str):
                sink.error(n, "answer", parsed)
                continue
            answer, style = parsed
        kinki: tuple[str, ...] = ()
        if "kinki" in obj and choices:
            kinki = _kinki(obj["kinki"], len(choices), style, n, sink)
            if kinki is None:
                continue
        subject = obj.get("answer_sub2", "")
        if style == "number":
            _NUMBERED.add((str(path), n))
        else:
            _NUMBERED.discard((str(path), n))
        ds.items.append(
            Question(
                id=qid,
                stem=obj["question"],
                choices=choices,
                answer=(answer,),
                points=points,
                block=block,
                exam=exam,
                year=year,
                text_only=obj["text_only"],
                kinki=kinki,
                kinki_known="kinki" in obj,
                category=subject if isinstance(subject, str) else str(subject),
                source="kokushimd10",
                accept_any=f"{exam}{block}{index}" in kind.accept_any,  # the exam's own corrections (116A71)
                exam_kind=kind.name,
                file=str(path),
                line=n,
            )
        )


def numbered(question) -> bool:
    """Whether the question was read with numbered choices (answered "13", not "AC")."""
    return (question.file, question.line) in _NUMBERED


def answer_text(question) -> str:
    """The gold answer as the scorer reads it right: "a,c" (its cleaning makes it "AC"), choice numbers
    "13" for numbered choices, the number for a numeric-entry question."""
    if not question.answer:
        return ""
    if numbered(question):
        return "".join(str(LETTERS.index(a) + 1) for a in question.answer[0])
    return ",".join(question.answer[0])


def official(question, text: str) -> tuple[str, ...] | None:
    """KokushiMD-10's scorer (calculate_scores.py): `canon` of the response equals `canon` of the gold
    answer ("a, c", "ca" and "答え：AC" are "AC"; "Ca" sorts to "CA" and is wrong). A response that reads
    as the right choices only after other rules than the scorer's is None (unparsed), never right."""
    got = canon(text)
    if not got:
        return None
    if question.numeric:
        return question.answer[0] if got == canon(question.answer[0][0]) else (got,)
    gold = question.answer[0]
    if got == canon(answer_text(question)):
        return gold
    found = _letters(got, len(question.choices), "number" if numbered(question) else "letter")
    if isinstance(found, str) or found[0] == gold:
        return None
    return found[0]


def files(folder: Path, ds: Dataset) -> list[Path]:
    """A checkout's question files (exams/JA/…): not its results/ and scoring/ JSON, not exams/EN/."""
    if not folder.is_dir():
        return [folder]
    out, other = [], []
    for f in data_files(folder):
        rel = f.relative_to(folder).parts
        (out if FILE.match(f.name) and "EN" not in rel[:-1] else other).append(f)
    if out and other:
        ds.warnings.append(
            DataError(
                str(folder), 0, "", f"{len(other)} other file(s) not read as KokushiMD-10 questions ({other[0].name} …)"
            )
        )
    return out or other  # none at all: the others, so that the reader names what is wrong with them


def folder(path: Path) -> bool:
    """A checkout, its exams/JA/ or one profession's folder: any file named as its question files."""
    return any(FILE.match(f.name) for f in data_files(path))


READER = Reader(
    name="kokushimd10",
    help="KokushiMD-10 (juniorliu95/KokushiMD-10): ten healthcare licensing exams, <profession>_<year>_<section>.json",
    read=read,
    detect=detect,
    priority=90,
    official=official,
    files=files,
    folder=folder,
    answer_text=answer_text,
    fields=frozenset(FIELDS)
    | {"choices", "kinki", "human_accuracy", "corrected_question_index", "answer_sub2"}
    | set(LETTERS)
    | {str(i) for i in range(1, len(LETTERS) + 1)},
)
