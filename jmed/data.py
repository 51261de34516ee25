"""Read every supported format into one `Question` model (DESIGN.md §3); filters, splits, digests.

Loaders never drop input silently: a malformed record becomes a `DataError` naming file, line and
field; a known, documented kind (image question, numeric entry, points 0) stays in the data and is
counted by `exclusions()`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from jmed.config import EXAM_KINDS

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_TRAIN = SAMPLE_DIR / "train.jsonl"
SAMPLE_TEST = SAMPLE_DIR / "test.jsonl"
SAMPLE_INSTRUCTIONS = SAMPLE_DIR / "instructions.jsonl"


@dataclass(frozen=True)
class Question:
    id: str
    stem: str
    choices: tuple[str, ...]
    # Acceptable answer sets, each a sorted tuple of letters: (("d", "e"),) is one set of two;
    # IgakuQA's "a or d" is (("a",), ("d",)). Numeric-entry questions hold the digit string: (("26",),).
    answer: tuple[tuple[str, ...], ...]
    points: float = 1.0
    block: str = ""  # exam block/section, "A".."F"
    exam: str = ""  # exam number, "116"
    year: int | None = None  # calendar year of the exam, 2022
    text_only: bool = True
    kinki: tuple[str, ...] = ()  # contraindicated choices (letters)
    kinki_known: bool = False  # the data says which choices are contraindicated (even none): the pass rule needs it
    category: str = ""
    source: str = ""  # igakuqa | jmle2026 | jjsimqa | jmmlu | sample | ...
    accept_any: bool = False  # official correction: every answer counts as correct (116A71)
    exam_kind: str = "medical"  # medical | dental | pharmacist | other: keys corrections, years and pass rules
    file: str = ""  # where it was read from, for messages
    line: int = 0

    @property
    def numeric(self) -> bool:
        return not self.choices

    @property
    def n_answers(self) -> int:
        return len(self.answer[0]) if self.answer else 0


@dataclass(frozen=True)
class InstructionRecord:
    instruction: str
    input: str
    output: str
    id: str = ""
    file: str = ""
    line: int = 0


SHOWN_CHARS = 200  # a value quoted in an error message is cut to this many characters


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """A value as quoted in an error message: repr-like, cut to `limit` characters with its length,
    so that a 50 MB field is named, not echoed into terminals, reports and the tracking store."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = json.dumps(text, ensure_ascii=False) if isinstance(value, str) else text
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(value) if isinstance(value, (str, list, dict)) else len(text)} characters)"


@dataclass(frozen=True)
class DataError:
    file: str
    line: int  # 0 when the error concerns the whole file
    field: str
    message: str

    def __post_init__(self):  # a last guard: no message carries a whole oversized value
        if len(self.message) > 4 * SHOWN_CHARS:
            object.__setattr__(self, "message", self.message[: 4 * SHOWN_CHARS] + f"… ({len(self.message)} characters)")

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class DataLoadError(ValueError):
    """Raised by `load_questions` when any record is invalid; carries every error."""

    def __init__(self, errors: list[DataError]):
        self.errors = errors
        shown = "\n".join(str(e) for e in errors[:20])
        more = f"\n… and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} data error(s):\n{shown}{more}")


# ------------------------------------------------------------------------------------------------
# Reading. Every loader returns records plus DataErrors; nothing raises on a bad record.

FORMATS = ("igakuqa", "igakuqa119", "medllm", "yakugakuqa", "jmle2026", "jjsimqa", "jmmlu", "instructions")
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# Official corrections, as data (the IgakuQA reference scorer hard-codes them). 112B30 needs no entry:
# its answer "a or d" is read as two acceptable answer sets.
# Keyed by exam kind and id: the dental exam has a 116A71 too, and it was not corrected.
ACCEPT_ANY = {("medical", "116A71")}  # every answer counts as correct
# IgakuQA119's own scorer accepts a or c for 119E28 (its answer file says "ac").
ALTERNATIVES = {("medical", "119E28"): (("a",), ("c",))}
# Calendar year = exam number + offset: medical 112th = 2018, dental 116th = 2023, pharmacist 109th = 2024
# (each held in January or February of that year).
YEAR_OFFSETS = {"medical": 1906, "dental": 1907, "pharmacist": 1915}

IGAKUQA_FIELDS = {"problem_id": str, "problem_text": str, "choices": list, "text_only": bool,
                  "answer": list, "points": (str, int, float)}
# The medLLM QA benchmark (github aistairc/medLLM_QA_benchmark): IgakuQA's schema per set, with integer
# ids (MedQA, MMLU, CMExam), PubMedQA's `context` (the abstract the question is about) and DenQA (the
# dental exam) answers "NA" for questions without an official answer.
MEDLLM_FIELDS = {**IGAKUQA_FIELDS, "problem_id": (str, int), "answer": (list, str)}
MEDLLM_SETS = {"denqa": "dental", "igakuqa": "medical", "jjsimqa": "medical"}  # file stem -> exam kind; others "other"
MEDLLM_FILES = {"denqa", "mmlu_en_medical", "medmcqa", "medqa_en", "medqa_en_4op", "pubmedqa", "cmexam", "medqa_zh",
                "medqa_zh_4op"}  # its sets whose ids do not give them away (igakuqa.jsonl and jjsimqa.jsonl read as such)
INSTRUCTION_FIELDS = {"instruction": str, "output": str}
JMLE_FIELDS = {"question_id": str, "block": str, "number": int, "question_type": str,
               "question_text": str, "requires_image": bool, "answer": list}
JMMLU_COLUMNS = ("question", "optionA", "optionB", "optionC", "optionD", "answer")
JMLE_TYPES = ("multiple_choice", "calculation")
NOT_REGULAR = "not a regular file (a named pipe, device or socket); jmed reads only files and folders"

_EXAM_ID = re.compile(r"^(\d{3})([A-Z])-?(\d+)")  # 112A1, 901B3, 120A-1
_NUMERIC = re.compile(r"^-?[0-9][0-9.,]*$")
_CHOICE_LINE = re.compile(r"^[ \u3000]*([a-z])[ \u3000]+(\S.*?)\s*$")  # JMLE2026: "a　text"
_QUESTION_NO = re.compile(r"^\d+[ \u3000]+")


@dataclass
class Dataset:
    """What one path held: records, errors, warnings and counted exclusions (reason -> ids)."""

    path: str
    format: str
    items: list = field(default_factory=list)  # Question or InstructionRecord
    errors: list[DataError] = field(default_factory=list)
    warnings: list[DataError] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"choices_unparsed": ["120C-71"]}
    files: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        """Valid records read, counting those set aside as exclusions."""
        return len(self.items) + sum(len(v) for v in self.skipped.values())

    @property
    def questions(self) -> list[Question]:
        return [q for q in self.items if isinstance(q, Question)]


class _Sink:
    """Collects errors and warnings for one file."""

    def __init__(self, ds: Dataset, file: str):
        self.ds, self.file = ds, file

    def error(self, line: int, fld: str, message: str) -> None:
        self.ds.errors.append(DataError(self.file, line, fld, message))

    def warn(self, line: int, fld: str, message: str) -> None:
        self.ds.warnings.append(DataError(self.file, line, fld, message))


def _japanese_score(text: str) -> float:
    """Share of characters that plausibly belong to Japanese or ASCII text (for encoding guesses)."""
    if not text:
        return 0.0
    good = sum(1 for ch in text if ch.isascii() or "\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff"
               or "\uff01" <= ch <= "\uff5e" or "\u3000" <= ch <= "\u303f")
    return good / len(text)


def guess_encoding(raw: bytes) -> str | None:
    """The likeliest non-UTF-8 encoding of Japanese text: utf-16, cp932 (Shift_JIS) or euc_jp."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    best, best_score = None, 0.0
    for enc in ("cp932", "euc_jp", "utf-16"):
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError:
            continue
        score = _japanese_score(text)
        if score > best_score + 1e-9:
            best, best_score = enc, score
    return best if best_score >= 0.9 else None


_ENCODING_NAMES = {"cp932": "Shift_JIS (cp932)", "euc_jp": "EUC-JP", "utf-16": "UTF-16"}


def read_text(path: Path, sink: _Sink) -> str | None:
    """The file's text. Lines that are not UTF-8: one error naming the first such line and the encoding
    they look like; they are then decoded with that guess so that the rest of the file is still checked.
    An empty file is an error and gives None."""
    if not path.is_file():  # a named pipe would block for ever, a device never end: refused before reading
        sink.error(0, "", NOT_REGULAR)
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        sink.error(0, "", f"cannot read: {exc.strerror or exc}")
        return None
    if not raw.strip():
        sink.error(0, "", "empty file (no records)")
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        first_bad = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start]
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with a byte-order mark: the whole file
        bad_lines, enc = [], "utf-16"
    else:
        lines = raw.split(b"\n")
        bad_lines = []
        for i, line in enumerate(lines):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad_lines.append(i)
        enc = guess_encoding(b"\n".join(lines[i] for i in bad_lines))
    looks = f"it looks like {_ENCODING_NAMES[enc]}" if enc else "its encoding is unknown"
    hint = f"; convert the file, e.g. iconv -f {enc} -t utf-8" if enc else "; save the file as UTF-8"
    more = f" ({len(bad_lines)} lines)" if len(bad_lines) > 1 else ""
    sink.error(first_bad, "encoding", f"not UTF-8 (byte 0x{byte:02x}){more}; {looks}{hint}")
    if not bad_lines:
        return raw.decode(enc, errors="replace")
    bad = set(bad_lines)
    return "\n".join(line.decode(enc or "utf-8", errors="replace") if i in bad else line.decode("utf-8")
                     for i, line in enumerate(lines))


def _jsonl(path: Path, sink: _Sink):
    """(line number, object) for each non-blank line; invalid JSON and non-objects are errors."""
    text = read_text(path, sink)
    if text is None:
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        obj = _loads(line, n, sink)
        if obj is _BAD:
            continue
        if not isinstance(obj, dict):
            sink.error(n, "", f"expected a JSON object, got {_type(obj)}")
            continue
        if _text_ok(obj, n, sink):
            yield n, obj


_BAD = object()


def _loads(text: str, n: int, sink: "_Sink"):
    """json.loads, with its failures as errors at line `n` (returns _BAD): invalid JSON, and nesting
    deeper than Python's parser can follow (which raises RecursionError, not a JSON error)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        sink.error(exc.lineno + n - 1, "", f"invalid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        sink.error(n, "", "invalid JSON: nested too deeply (about a thousand levels of [ or { or more)")
    return _BAD


def bad_text(value, path: str = "") -> tuple[str, str] | None:
    """(field, problem) for the first string that no later step could handle: a lone surrogate
    (JSON's "\\ud800" escape decodes to one, and it cannot be encoded as UTF-8) or a NUL character.
    Walks without recursion: parsed JSON may be nested as deep as the parser allows."""
    stack = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return where, "contains a NUL character (\\u0000)"
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as exc:
                return where, f"not valid Unicode: lone surrogate \\u{ord(node[exc.start]):04x}"
            continue
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        children = []
        for key, v in items:
            if isinstance(key, str):
                children.append((where, key))  # a key is checked as a string of its parent's field
            children.append((f"{where}.{key}" if where and isinstance(key, str) else
                             f"{where}[{key}]" if where else str(key), v))
        stack.extend(reversed(children))
    return None


def _text_ok(obj, n: int, sink: "_Sink") -> bool:
    found = bad_text(obj)
    if found:
        sink.error(n, found[0], found[1])
    return found is None


def jsonl_objects(path) -> tuple[list[tuple[int, dict]], list[DataError]]:
    """Every JSON object of a JSONL file with its line number, and an error per bad line or file
    (not UTF-8, invalid JSON, not an object): for prediction and question files outside the loaders."""
    path = Path(path)
    ds = Dataset(str(path), "jsonl")
    objects = list(_jsonl(path, _Sink(ds, str(path))))
    return objects, ds.errors


def _type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _fields(obj: dict, spec: dict, n: int, sink: _Sink) -> bool:
    """Check required fields and their types; every problem is reported. True when all are fine."""
    ok = True
    for name, kind in spec.items():
        if name not in obj:
            sink.error(n, name, "missing field")
            ok = False
        elif not isinstance(obj[name], kind) or (isinstance(obj[name], bool) and kind in (int, (str, int))):
            # true is not an id or a count (points reports its own bool error: `_points`)
            names = {str: "a string", list: "a list", bool: "a boolean (true/false)", int: "an integer"}
            want = names.get(kind) or ("a number or a numeric string" if float in kind else
                                       " or ".join(names[k] for k in kind))
            sink.error(n, name, f"expected {want}, got {_type(obj[name])}")
            ok = False
    return ok


def _choices(value: list, n: int, sink: _Sink, fld: str = "choices") -> tuple[str, ...] | None:
    bad = [i for i, c in enumerate(value) if not isinstance(c, str)]
    if bad:
        sink.error(n, fld, f"choice {bad[0] + 1} is {_type(value[bad[0]])}, expected a string")
        return None
    return tuple(value)


def _answer(value: list, n_choices: int, n: int, sink: _Sink, fld: str = "answer"):
    """Answer list -> acceptable answer sets. "a or d" -> two sets; numeric questions keep the string."""
    if not value:
        sink.error(n, fld, "empty answer")
        return None
    if not all(isinstance(a, str) for a in value):
        sink.error(n, fld, "expected a list of strings")
        return None
    if n_choices == 0:  # numeric entry: one digit string such as "26" or "04"
        if len(value) != 1 or not _NUMERIC.match(value[0].strip()):
            sink.error(n, fld, f"numeric-entry question (no choices) needs one number, got {shown(value)}")
            return None
        return ((value[0].strip(),),)
    tokens = [a.strip().lower() for a in value]
    if any(t == "," for t in tokens):  # a stray "," between letters (seen in JJSIMQA 107_888-26)
        sink.warn(n, fld, f"stray \",\" in answer {shown(value)}, read as {shown([t for t in tokens if t != ','])}")
        tokens = [t for t in tokens if t != ","]
    if len(tokens) == 1 and " or " in tokens[0]:
        sets = [(t.strip(),) for t in tokens[0].split(" or ")]
    else:
        sets = [tuple(sorted(tokens))]
    allowed = LETTERS[:n_choices]
    for s in sets:
        for letter in s:
            if len(letter) != 1 or letter not in allowed:
                sink.error(n, fld, f'letter {shown(letter)} outside {n_choices} choices')
                return None
        if len(set(s)) != len(s):
            sink.error(n, fld, f"repeated letter in {list(s)}")
            return None
    return tuple(sets)


def _points(value, n: int, sink: _Sink) -> float | None:
    if isinstance(value, bool):  # JSON true is not 1 point
        sink.error(n, "points", f"expected a number or a numeric string, got a boolean ({shown(value)})")
        return None
    try:
        points = float(value)
    except (TypeError, ValueError):
        sink.error(n, "points", f"not a number: {shown(value)}")
        return None
    if not 0 <= points < float("inf"):  # NaN and Infinity too: they would make scores NaN
        sink.error(n, "points", f"must be a finite number, 0 or more, got {shown(value)}")
        return None
    return points


def exam_year(exam: str, kind: str = "medical") -> int | None:
    """Calendar year of a Japanese national exam number: medical 112 -> 2018, dental 116 -> 2023,
    pharmacist 109 -> 2024; None for other exams and other numbers."""
    if exam.isdigit() and 100 <= int(exam) <= 199 and kind in YEAR_OFFSETS:
        return int(exam) + YEAR_OFFSETS[kind]
    return None


def with_exam_kind(questions, kind: str) -> list:
    """The questions as exam `kind` (`--exam-kind`): corrections and the year mapping follow the kind;
    a year the data states itself (IgakuQA metadata, a year folder) is kept. (IgakuQA119's 119E28 rule
    is its own scorer's, read with that medical dataset only.)"""
    import dataclasses

    if kind not in EXAM_KINDS:
        raise ValueError(f"unknown exam kind {kind!r}; choose one of: {', '.join(EXAM_KINDS)}")
    out = []
    for q in questions:
        if not isinstance(q, Question) or q.exam_kind == kind:
            out.append(q)
            continue
        derived = q.year is None or q.year == exam_year(q.exam, q.exam_kind)
        out.append(dataclasses.replace(q, exam_kind=kind, accept_any=(kind, q.id) in ACCEPT_ANY,
                                       year=exam_year(q.exam, kind) if derived else q.year))
    return out


def _metadata(path: Path, ds: Dataset) -> dict[str, tuple[int, dict]]:
    meta_path = path.with_name(path.stem + "_metadata.jsonl")
    if not meta_path.exists():
        return {}
    sink = _Sink(ds, str(meta_path))
    out: dict[str, tuple[int, dict]] = {}
    for n, obj in _jsonl(meta_path, sink):
        pid = obj.get("problem_id")
        if not isinstance(pid, str) or not pid:
            sink.error(n, "problem_id", "missing field" if pid is None else f"expected a string, got {_type(pid)}")
            continue
        if "kinki" in obj and not (isinstance(obj["kinki"], list) and all(isinstance(k, str) for k in obj["kinki"])):
            sink.error(n, "kinki", f"expected a list of letters, got {_type(obj['kinki'])}")
            continue
        if "year" in obj and (not isinstance(obj["year"], int) or isinstance(obj["year"], bool)):
            sink.error(n, "year", f"expected an integer year, got {_type(obj['year'])}")
            continue
        if pid in out:
            sink.error(n, "problem_id", f'duplicate id {shown(pid)} (first at line {out[pid][0]})')
            continue
        out[pid] = (n, obj)
    return out


def _translations(path: Path, ds: Dataset) -> dict[str, dict]:
    tr_path = path.with_name(path.stem + "_translate.jsonl")
    if not tr_path.exists():
        _Sink(ds, str(path)).error(0, "", f"translation requested but {tr_path.name} is absent")
        return {}
    return {obj.get("problem_id"): obj for _, obj in _jsonl(tr_path, _Sink(ds, str(tr_path)))}


def _folder_year(path: Path) -> int | None:
    name = path.parent.name
    return int(name) if name.isdigit() and len(name) == 4 else None


def _read_igakuqa(path: Path, ds: Dataset, source: str, translate: bool = False) -> None:
    """IgakuQA JSONL (and JJSIMQA and the medLLM QA benchmark, which share its schema), with
    `<name>_metadata.jsonl` joined in."""
    sink = _Sink(ds, str(path))
    meta = _metadata(path, ds) if source == "igakuqa" else {}
    trans = _translations(path, ds) if translate else {}
    folder_year = _folder_year(path)
    kind = MEDLLM_SETS.get(path.stem.lower(), "other") if source == "medllm" else "medical"
    for n, obj in _jsonl(path, sink):
        if not _fields(obj, MEDLLM_FIELDS if source == "medllm" else IGAKUQA_FIELDS, n, sink):
            continue
        pid = str(obj["problem_id"]).strip()
        if isinstance(obj["answer"], str):  # medLLM: "NA" where the exam has no official answer
            if obj["answer"].strip().upper() != "NA":
                sink.error(n, "answer", f"expected a list of letters or \"NA\", got {shown(obj['answer'])}")
                continue
            ds.skipped.setdefault("no_answer", []).append(pid)
            sink.warn(n, "answer", f"{pid}: answer \"NA\" (no official answer); excluded")
            continue
        if source == "medllm" and obj.get("context"):
            if not isinstance(obj["context"], str):
                sink.error(n, "context", f"expected a string, got {_type(obj['context'])}")
                continue
            obj = {**obj, "problem_text": f"{obj['context'].strip()}\n\n{obj['problem_text']}"}  # PubMedQA's abstract
        choices = _choices(obj["choices"], n, sink)
        if choices is None:
            continue
        answer = _answer(obj["answer"], len(choices), n, sink)
        points = _points(obj["points"], n, sink)
        if answer is None or points is None:
            continue
        stem = obj["problem_text"]
        if pid in trans:
            stem = trans[pid].get("problem_text_en", stem)
            choices = tuple(trans[pid].get("choices_en", choices))
        numbered = source == "igakuqa" or (source == "medllm" and kind in ("medical", "dental"))  # 116A1-style ids
        m = _EXAM_ID.match(pid) if numbered else None
        exam, block = (m.group(1), m.group(2)) if m else ("", "")
        mline, mobj = meta.get(pid, (0, {}))
        kinki: list[str] = []
        for k in mobj.get("kinki", []):  # full-width "ｂ" is b; "cde" in one entry means c, d and e
            k = unicodedata.normalize("NFKC", k).strip().lower()
            kinki.extend(k) if k.isalpha() else kinki.append(k)
        bad = [k for k in kinki if k not in LETTERS[:len(choices)]]
        if bad:
            _Sink(ds, str(path.with_name(path.stem + "_metadata.jsonl"))).error(
                mline, "kinki", f'letter "{bad[0]}" outside {len(choices)} choices of {pid}')
            continue
        year = mobj.get("year") or folder_year or exam_year(exam, kind)
        ds.items.append(Question(
            id=pid, stem=stem, choices=choices, answer=answer, points=points, block=block, exam=exam,
            year=year, text_only=obj["text_only"], kinki=tuple(sorted(set(kinki))), kinki_known="kinki" in mobj,
            category=str(mobj.get("category", "")), source=source, accept_any=(kind, pid) in ACCEPT_ANY,
            exam_kind=kind,
            file=str(path), line=n,
        ))


# IgakuQA119 (github docto-rin/IgakuQA119): questions/119A_json.json … (a JSON list of {number, question,
# choices ["a. …"], has_image}), answers in results/correct_answers.csv (問題番号,解答; letters written
# together, "ce"; numbers for numeric entry). Points as its scorer: 3 for blocks B/E questions 26-50.
IGAKUQA119_FILE = re.compile(r"^\d{3}[A-F]_json\.json$")
MISSING_CHOICE = "（原文で欠落：前後の選択肢と結合）"  # a label the source lost by merging two choices
_LABEL = re.compile(r"^\s*([a-z])[.．]\s*")


def _igakuqa119_answers(path: Path, sink: _Sink) -> dict[str, tuple[int, str]] | None:
    """{question number: (line, answer)} from the correct_answers.csv beside the questions (same folder,
    its parent, or ../results/); None (an error naming where it looked) when there is none."""
    import csv

    places = [path.parent / "correct_answers.csv", path.parent.parent / "correct_answers.csv",
              path.parent.parent / "results" / "correct_answers.csv"]
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        sink.error(0, "", "IgakuQA119 answers not found: looked for " + ", ".join(str(p) for p in places))
        return None
    text = read_text(found, _Sink(sink.ds, str(found)))
    if text is None:
        return None
    rows = list(csv.reader(text.splitlines()))
    return {r[0].strip(): (n, r[1].strip()) for n, r in enumerate(rows[1:], 2) if len(r) >= 2 and r[0].strip()}


def _read_igakuqa119(path: Path, ds: Dataset) -> None:
    sink = _Sink(ds, str(path))
    answers = _igakuqa119_answers(path, sink)
    if answers is None:
        return
    for n, obj in _json_records(path, sink):
        if not _fields(obj, {"number": str, "question": str, "choices": list, "has_image": bool}, n, sink):
            continue
        qid = obj["number"].strip()
        m = _EXAM_ID.match(qid)
        if not m:
            sink.error(n, "number", f"{shown(qid)} is not a question number such as 119A1")
            continue
        raw = _choices(obj["choices"], n, sink)
        if raw is None:
            continue
        labels = [(_LABEL.match(c).group(1) if _LABEL.match(c) else "") for c in raw]
        texts = [_LABEL.sub("", c, count=1).strip() for c in raw]
        if raw and labels != list(LETTERS[:len(raw)]):
            # merged in the source: place each choice at its label so answer letters still point right
            sink.warn(n, "choices", f"{qid}: choice labels {''.join(lb or '?' for lb in labels)} are not a, b, c, …: "
                                    f"choices merged in the source; letters are kept, choice texts may be garbled")
            if all(labels) and len(set(labels)) == len(labels):
                slots = {lb: t for lb, t in zip(labels, texts)}
                texts = [slots.get(lb, MISSING_CHOICE) for lb in LETTERS[:LETTERS.index(max(labels)) + 1]]
        elif raw and len(raw) != 5:
            sink.warn(n, "choices", f"{qid}: {len(raw)} choices where the exam has 5: merged in the source?")
        if qid not in answers:
            sink.error(n, "number", f"{qid} has no answer in correct_answers.csv")
            continue
        line, gold = answers[qid]
        if not texts and not _NUMERIC.match(gold):  # 119E45, 119E48: the choices sit inside the question text
            ds.skipped.setdefault("choices_unparsed", []).append(qid)
            sink.warn(n, "choices", f"{qid}: no choice list but a letter answer ({gold}): the choices are inside "
                                    "the question text; excluded")
            continue
        if ("medical", qid) in ALTERNATIVES:
            answer = ALTERNATIVES[("medical", qid)]
        elif not texts:
            answer = _answer([gold], 0, n, sink)
        else:
            answer = _answer([gold] if "," in gold else list(gold.lower()), len(texts), n, sink)
        if answer is None:
            continue
        exam, block, number = m.group(1), m.group(2), int(m.group(3))
        ds.items.append(Question(
            id=qid, stem=obj["question"].strip(), choices=tuple(texts), answer=answer,
            points=3.0 if block in ("B", "E") and 26 <= number <= 50 else 1.0, block=block, exam=exam,
            year=exam_year(exam), text_only=not obj["has_image"], source="igakuqa119", file=str(path), line=n))


# YakugakuQA (the pharmacist exam; github EQUES-Inc/pharma-LLM-eval): data/<year>/<exam>-<block>.jsonl in
# IgakuQA's schema with answers as choice numbers ("3"), "IMAGES" where the choices are a figure,
# metadata_<exam>.jsonl (ids without the block) and a whole-year <exam>.jsonl repeating the block files.
YAKUGAKU_ID = re.compile(r"^(\d{3})([A-F])(\d{3})$")
_YAKU_ANY = re.compile(r"いずれか\s*([0-9１-９一二三四五])\s*つ")


def _yakugakuqa_answer(items: list, n_choices: int, n: int, sink: _Sink):
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


def _read_yakugakuqa(path: Path, ds: Dataset) -> None:
    sink = _Sink(ds, str(path))
    meta_path = path.with_name(f"metadata_{path.stem.split('-')[0]}.jsonl")
    meta = {str(o.get("problem_id")): o for _, o in _jsonl(meta_path, _Sink(ds, str(meta_path)))} \
        if meta_path.is_file() else {}
    folder_year = _folder_year(path)
    for n, obj in _jsonl(path, sink):
        if not _fields(obj, {**IGAKUQA_FIELDS, "choices": (list, str)}, n, sink):
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
            choices = _choices(obj["choices"], n, sink)
            if choices is None:
                continue
        answer = _yakugakuqa_answer(answers, len(choices), n, sink)
        if answer == "none":
            ds.skipped.setdefault("no_answer", []).append(pid)
            sink.warn(n, "answer", f"{pid}: {shown(answers)}: no correct answer (解なし); excluded")
            continue
        points = _points(obj["points"], n, sink)
        if answer is None or points is None:
            continue
        exam, block, number = m.groups()
        ds.items.append(Question(
            id=pid, stem=obj["problem_text"], choices=choices, answer=answer, points=points, block=block, exam=exam,
            year=folder_year or exam_year(exam, "pharmacist"),
            text_only=obj["text_only"] and not isinstance(obj["choices"], str),
            category=str(meta.get(exam + number, {}).get("category", "")), source="yakugakuqa",
            exam_kind="pharmacist", file=str(path), line=n))


def _without_year_files(files: list[Path], ds: Dataset) -> list[Path]:
    """YakugakuQA's whole-year <exam>.jsonl repeats its block files: read the blocks, say so once."""
    out = []
    for f in files:
        blocks = sorted(f.parent.glob(f"{f.stem}-[A-F].jsonl")) if re.fullmatch(r"\d{3}", f.stem) else []
        if blocks:
            ds.warnings.append(DataError(str(f), 0, "", f"whole-year file repeating {len(blocks)} block files "
                                                        f"({blocks[0].name} …): skipped, the blocks are read"))
        else:
            out.append(f)
    return out


def _json_records(path: Path, sink: _Sink):
    """(line, object) for each element of a top-level JSON list, with the line where it starts."""
    text = read_text(path, sink)
    if text is None:
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        sink.error(exc.lineno, "", f"invalid JSON: {exc.msg} (column {exc.colno}); the file cannot be read further")
        return
    except RecursionError:
        sink.error(1, "", "invalid JSON: nested too deeply (about a thousand levels of [ or { or more); "
                          "the file cannot be read further")
        return
    if not isinstance(data, list):
        sink.error(1, "", f"expected a JSON list of questions, got {_type(data)}")
        return
    decoder, pos = json.JSONDecoder(), text.index("[") + 1
    for obj in data:  # walk the text again to find where each element starts
        while text[pos] in " \t\r\n,":
            pos += 1
        _, end = decoder.raw_decode(text, pos)
        line = text.count("\n", 0, pos) + 1
        pos = end
        if not isinstance(obj, dict):
            sink.error(line, "", f"expected a JSON object, got {_type(obj)}")
            continue
        if _text_ok(obj, line, sink):
            yield line, obj


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
    if len(found) < 2 or [letter for letter, _ in found] != list(LETTERS[:len(found)]):
        return None
    stem = _QUESTION_NO.sub("", "\n".join(lines[:i]).strip(), count=1).strip()
    return stem, tuple(t for _, t in found)


def _read_jmle2026(path: Path, ds: Dataset) -> None:
    sink = _Sink(ds, str(path))
    for n, obj in _json_records(path, sink):
        if not _fields(obj, JMLE_FIELDS, n, sink):
            continue
        qid = obj["question_id"].strip()
        m = _EXAM_ID.match(qid)
        exam = m.group(1) if m else ""
        block, number = obj["block"], obj["number"]
        context = _jmle_context(obj, n, sink)
        if context is None:
            continue
        if obj["question_type"] == "calculation":
            stem, choices = _QUESTION_NO.sub("", obj["question_text"].strip(), count=1), ()
        else:
            parsed = split_jmle_choices(obj["question_text"])
            if parsed is None:  # e.g. choices laid out in a table: a counted exclusion, not an error
                ds.skipped.setdefault("choices_unparsed", []).append(qid)
                sink.warn(n, "question_text", f"choices of {qid} could not be parsed from the text; excluded")
                continue
            stem, choices = parsed
        answer = _answer(obj["answer"], len(choices), n, sink)
        if answer is None:
            continue
        select = obj.get("num_choices_to_select")
        if choices and select is not None and len(answer) == 1 and select != len(answer[0]):
            sink.error(n, "answer", f"num_choices_to_select is {select} but the answer has {len(answer[0])} "
                                    f"letter(s): {','.join(answer[0])}")
            continue
        ds.items.append(Question(
            id=qid, stem=f"{context.strip()}\n{stem}" if context else stem, choices=choices, answer=answer,
            # required blocks B and E: questions 26-50 are 3-point clinical questions (as in IgakuQA)
            points=3.0 if block in ("B", "E") and number > 25 else 1.0,
            block=block, exam=exam, year=exam_year(exam), text_only=not obj["requires_image"],
            source="jmle2026", file=str(path), line=n,
        ))


def _jmle_context(obj: dict, n: int, sink: _Sink) -> str | None:
    """The shared case text of a serial question group ("" for none); None after an error. Also checks
    the fields `_fields` cannot: question_type's values and num_choices_to_select's type."""
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
        sink.error(n, "serial_group", f"expected an object or null, got {_type(group)}")
        return None
    context = group.get("context_text", "")
    if not isinstance(context, str):
        sink.error(n, "serial_group.context_text", f"expected a string, got {_type(context)}")
        return None
    return context


def _read_jmmlu(path: Path, ds: Dataset) -> None:
    """JMMLU / JMED-LLM CSV: question, optionA-D, answer (A-D); optional tag -> category."""
    sink = _Sink(ds, str(path))
    text = read_text(path, sink)
    if text is None:
        return
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        sink.error(1, "", f"cannot read the CSV header: {exc}")
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
        if not _text_ok(values, n, sink):
            continue
        empty = [c for c in JMMLU_COLUMNS if not values[c]]
        if empty:
            for c in empty:
                sink.error(n, c, "empty value")
            continue
        letter = values["answer"].upper()
        if len(letter) != 1 or letter not in "ABCD":
            sink.error(n, "answer", f'letter {shown(values["answer"])} outside 4 choices (A-D)')
            continue
        qid = values.get("id") or f"{path.stem}-{row_no}"
        ds.items.append(Question(
            id=qid, stem=values["question"], choices=tuple(values[f"option{c}"] for c in "ABCD"),
            answer=((letter.lower(),),), category=values.get("tag", ""), source="jmmlu", exam_kind="other", file=str(path), line=n,
        ))


def _read_instructions(path: Path, ds: Dataset) -> None:
    sink = _Sink(ds, str(path))
    for n, obj in _jsonl(path, sink):
        if not _fields(obj, INSTRUCTION_FIELDS, n, sink):
            continue
        inp = obj.get("input", "")
        if not isinstance(inp, str):
            sink.error(n, "input", f"expected a string, got {_type(inp)}")
            continue
        empty = [k for k in ("instruction", "output") if not obj[k].strip()]
        if empty:
            sink.error(n, empty[0], "empty value")
            continue
        rid = str(obj.get("id") or f"{path.stem}-{n}")
        ds.items.append(InstructionRecord(obj["instruction"], inp, obj["output"], id=rid, file=str(path), line=n))


def _data_files(path: Path) -> list[Path]:
    """The question/record files under a folder (IgakuQA year folder or whole data/ tree)."""
    files = []
    for folder, names in _walk(path):
        files += [folder / n for n in names if n.endswith((".jsonl", ".json", ".csv"))]
    return sorted(p for p in files if not p.name.endswith(("_metadata.jsonl", "_translate.jsonl"))
                  and not p.name.startswith("metadata_"))  # YakugakuQA's metadata_103.jsonl


def _igakuqa119_files(path: Path) -> list[Path]:
    return sorted(folder / n for folder, names in _walk(path) for n in names if IGAKUQA119_FILE.match(n))


def _walk(root: Path):
    """(folder, file names) under `root`, following symlinked folders (a data tree of linked year
    folders); a link back to a folder above it is an error, not an endless walk."""
    import os

    stack = [(root, (os.path.realpath(root),))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise ValueError(f"{folder}: cannot list this folder: {exc.strerror or exc}") from exc
        yield folder, [e.name for e in entries if e.is_file()]
        for e in entries:
            if e.is_dir():
                real = os.path.realpath(e.path)
                if real in ancestors:
                    raise ValueError(f"{e.path}: symlink loop (it leads back to {real})")
                stack.append((Path(e.path), ancestors + (real,)))


def detect_format(path) -> str:
    """igakuqa | jmle2026 | jjsimqa | jmmlu | instructions, from a file's (or a folder's first file's) content."""
    path = Path(path)
    if path.is_dir() and _igakuqa119_files(path):
        return "igakuqa119"
    if path.is_dir():
        files = _data_files(path)
        if not files:
            raise ValueError(f"{path}: no .jsonl, .json or .csv files in this folder")
        path = files[0]
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "jmmlu"
    try:
        head = path.read_bytes()[:1 << 16].decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc
    if IGAKUQA119_FILE.match(path.name) or re.search(r'"number"\s*:\s*"\d{3}[A-F]\d+"', head):
        return "igakuqa119"
    if suffix == ".json" or head.lstrip().startswith("["):
        return "jmle2026"
    for line in head.splitlines():
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # the reader reports it, line by line
            continue
        if isinstance(obj, dict):
            if "instruction" in obj and "output" in obj:
                return "instructions"
            if YAKUGAKU_ID.match(str(obj.get("problem_id", ""))):
                return "yakugakuqa"
            if path.stem.lower() in MEDLLM_FILES or "context" in obj or (
                    isinstance(obj.get("problem_id"), int) and not isinstance(obj.get("problem_id"), bool)):
                return "medllm"
            if "choices_orig" in obj or re.match(r"^\d+_\d+-\d+$", str(obj.get("problem_id", ""))):
                return "jjsimqa"
            return "igakuqa"
    if suffix == ".jsonl":
        return "igakuqa"  # nothing readable: let the IgakuQA reader report what is wrong line by line
    raise ValueError(f"{path}: cannot detect the format; pass one of {', '.join(FORMATS)}")


def read_dataset(path, fmt: str = "auto", translate: bool = False) -> Dataset:
    """Read a file, a folder or a whole IgakuQA data/ tree. Never raises on bad input: a path that
    does not exist or cannot be detected becomes an error too."""
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"unknown data format {fmt!r}; choose auto or one of: {', '.join(FORMATS)}")
    if not str(path).strip():  # never read the working directory by accident
        ds = Dataset(path="", format=fmt)
        ds.errors.append(DataError("", 0, "", "no data path given"))
        return ds
    path = Path(path)
    ds = Dataset(path=str(path), format=fmt)
    if not path.exists():
        ds.errors.append(DataError(str(path), 0, "", "no such file or folder"))
        return ds
    if not path.is_dir() and not path.is_file():
        ds.errors.append(DataError(str(path), 0, "", NOT_REGULAR))
        return ds
    if fmt == "auto":
        try:
            ds.format = detect_format(path)
        except ValueError as exc:
            ds.errors.append(DataError(str(path), 0, "", str(exc).removeprefix(f"{path}: ")))
            return ds
    if path.is_dir():  # an IgakuQA119 checkout holds model answers and results too: only its question files
        files = _igakuqa119_files(path) if ds.format == "igakuqa119" else _data_files(path)
    else:
        files = [path]
    if ds.format == "yakugakuqa" and path.is_dir():
        files = _without_year_files(files, ds)
    if fmt == "auto" and path.is_dir() and len(files) > 1:
        kinds: dict[str, list[str]] = {}
        for f in files:
            try:
                kinds.setdefault(detect_format(f), []).append(f.name)
            except ValueError:
                pass  # the reader reports an unreadable file itself
        if len(kinds) > 1:  # read as one format, every file of the others would fail line by line
            ds.errors.append(DataError(str(path), 0, "", "this folder mixes formats: " + "; ".join(
                f"{k} ({', '.join(v[:3])}{', …' if len(v) > 3 else ''})" for k, v in sorted(kinds.items()))
                + "; pass the files (or --format) separately"))
            return ds
    if not files:
        ds.errors.append(DataError(str(path), 0, "", "no data files in this folder"))
    for f in files:
        ds.files.append(str(f))
        if ds.format in ("igakuqa", "jjsimqa", "medllm"):
            _read_igakuqa(f, ds, ds.format, translate)
        elif ds.format == "igakuqa119":
            _read_igakuqa119(f, ds)
        elif ds.format == "yakugakuqa":
            _read_yakugakuqa(f, ds)
        elif ds.format == "jmle2026":
            _read_jmle2026(f, ds)
        elif ds.format == "jmmlu":
            _read_jmmlu(f, ds)
        else:
            _read_instructions(f, ds)
    ds.errors.extend(duplicate_ids(ds.items))
    if fmt == "auto" and not ds.items and len(ds.errors) >= MANY_ERRORS:
        ds = _no_reader_fits(path, ds, translate)
    if not ds.items and not ds.errors:  # "OK: 0 questions" would pass an empty file on to training
        excluded = sum(len(v) for v in ds.skipped.values())
        ds.errors.append(DataError(str(path), 0, "", "no questions or records in the data" +
                                   (f" ({excluded} excluded)" if excluded else "")))
    order = {f: i for i, f in enumerate(ds.files)}
    ds.errors.sort(key=lambda e: (order.get(e.file, -1), e.file, e.line))
    return ds


MANY_ERRORS = 20  # an auto-detected reader that reads nothing and fails this often is the wrong reader


def _no_reader_fits(path: Path, detected: Dataset, translate: bool) -> Dataset:
    """The detected reader read nothing: try the others. One that reads the data wins; else a single error
    names every format tried and its most common problem, before the detected reader's first errors."""
    from collections import Counter

    tried = []
    for fmt in FORMATS:
        ds = detected if fmt == detected.format else read_dataset(path, fmt, translate)
        if ds.items and not ds.errors:
            return ds
        top = Counter((e.field, re.sub(r"\b\d+\b", "N", e.message)) for e in ds.errors).most_common(1)
        why = f"{top[0][0][0] + ': ' if top[0][0][0] else ''}{top[0][0][1]} ({top[0][1]} of {len(ds.errors)} errors)" \
            if top else "read nothing"
        tried.append(f"{fmt}: {why}")
    detected.errors = [DataError(str(path), 0, "", "no reader fits this data; formats tried: " + "; ".join(tried))] \
        + detected.errors[:5]
    return detected


def duplicate_ids(items) -> list[DataError]:
    """An error for every record whose id was already used (naming where it was first seen)."""
    first: dict[str, object] = {}
    errors = []
    for it in items:
        if it.id in first:
            f = first[it.id]
            where = f"line {f.line}" if f.file == it.file else f"{f.file}:{f.line}"
            fld = "problem_id" if isinstance(it, Question) and it.source in ("igakuqa", "jjsimqa") else "id"
            errors.append(DataError(it.file, it.line, fld, f'duplicate id {shown(it.id)} (first at {where})'))
        else:
            first[it.id] = it
    return errors


def read_questions(path, fmt: str = "auto") -> tuple[list[Question], list[DataError]]:
    """Questions and errors; never raises on bad records."""
    ds = read_dataset(path, fmt)
    if ds.format == "instructions":
        return [], ds.errors + [DataError(str(path), 0, "", "holds instruction records, not questions")]
    return ds.questions, ds.errors


def load_questions(path, fmt: str = "auto", filters=None) -> list[Question]:
    """Questions from a file, folder or data/ tree; raises DataLoadError listing every error."""
    questions, errors = read_questions(path, fmt)
    if errors:
        raise DataLoadError(errors)
    return apply_filters(questions, filters)


def load_instructions(path) -> list[InstructionRecord]:
    ds = read_dataset(path, "instructions")
    if ds.errors:
        raise DataLoadError(ds.errors)
    return ds.items


def load_training_items(path, fmt: str = "auto") -> list:
    """Questions or instruction records, whichever the path holds; raises DataLoadError on any error."""
    ds = read_dataset(path, fmt)
    if ds.errors:
        raise DataLoadError(ds.errors)
    return ds.items


# ------------------------------------------------------------------------------------------------
# Digests, filters, splits, exclusions.

def _canonical(item) -> dict:
    if isinstance(item, InstructionRecord):
        return {"id": item.id, "instruction": item.instruction, "input": item.input, "output": item.output}
    return {"id": item.id, "stem": item.stem, "choices": list(item.choices),
            "answer": [list(a) for a in item.answer], "points": float(item.points), "block": item.block,
            "exam": item.exam, "year": item.year, "text_only": item.text_only, "kinki": list(item.kinki),
            "category": item.category, "accept_any": item.accept_any}


def digest(items) -> str:
    """sha256 of the records' content: independent of order, file paths, line numbers and machine."""
    lines = sorted(json.dumps(_canonical(it), ensure_ascii=False, sort_keys=True) for it in items)
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def filter_reason(q, filters) -> str | None:
    """Why a DataFilter leaves `q` out (the option that does), or None when it keeps it."""
    if filters is None:
        return None
    if filters.ids and q.id not in set(filters.ids):
        return "not in --ids"
    if q.id in set(filters.exclude_ids):
        return "--exclude-ids"
    if isinstance(q, Question):
        if filters.text_only and not q.text_only:
            return "--text-only (has images)"
        if filters.five_choices and len(q.choices) != 5:
            return "--five-choices (not 5 choices)"
        if filters.scored_only and q.points <= 0:
            return "--scored-only (unscored)"
        if filters.years and q.year not in set(filters.years):
            return "not in --years"
        if filters.blocks and q.block not in set(filters.blocks):
            return "not in --blocks"
    return None


def apply_filters(questions, filters=None) -> list:
    """Keep what a DataFilter allows (None or an empty filter keeps everything)."""
    return [q for q in questions if filter_reason(q, filters) is None]


def left_out_counts(questions, filters) -> dict[str, int]:
    """{reason: questions} for what a DataFilter leaves out (every question counted once, by its first reason)."""
    out: dict[str, int] = {}
    for q in questions:
        why = filter_reason(q, filters)
        if why:
            out[why] = out.get(why, 0) + 1
    return out


def sample_questions(questions, n: int, seed: int) -> list:
    """A fixed random subset of `n` questions (all when n <= 0 or n >= len): the same ids for the same
    data and seed on every machine and in every order of reading; kept in the data's order. Unlike
    taking the first N (block A first), every block and year is represented."""
    questions = list(questions)
    if n <= 0 or n >= len(questions):
        return questions
    import random

    ids = sorted(q.id for q in questions)
    keep = set(random.Random(f"jmed-sample:{seed}").sample(ids, n))
    return [q for q in questions if q.id in keep]


def split_by_year(questions, test_years) -> tuple[list, list]:
    """(train, test): test holds the questions of `test_years`; train the rest (unknown year too)."""
    years = {int(test_years)} if isinstance(test_years, (int, str)) else {int(y) for y in test_years}
    test = [q for q in questions if q.year in years]
    train = [q for q in questions if q.year not in years]
    return train, test


EXCLUSION_REASONS = ("image", "numeric_answer", "not_scored", "not_five_choices")


def exclusion_reasons(q: Question) -> list[str]:
    reasons = []
    if not q.text_only:
        reasons.append("image")
    if not q.choices:
        reasons.append("numeric_answer")
    if q.points <= 0:
        reasons.append("not_scored")
    if len(q.choices) != 5:
        reasons.append("not_five_choices")
    return reasons


def exclusions(questions) -> dict[str, int]:
    """Counts by reason; a question counts under every reason that applies."""
    counts = dict.fromkeys(EXCLUSION_REASONS, 0)
    for q in questions:
        if isinstance(q, Question):
            for r in exclusion_reasons(q):
                counts[r] += 1
    return counts
