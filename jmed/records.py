"""The records every reader produces (`Question`, `InstructionRecord`), how bad input is reported
(`DataError`: file, line, field, message) and the parsing helpers readers share: text decoding, JSON
lines, field specs, choices, answers and points.

Loaders never drop input silently: a malformed record becomes a `DataError`; a known, documented kind
(image question, numeric entry, points 0) stays in the data and is counted by `data.exclusions()`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path


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
    exam_kind: str = "medical"  # a registered exam kind (jmed.exams): keys corrections, years and pass rules
    # Why no prompt can be made of it ("choices_unparsed": its choices are in a table; "blank_stem"), or "".
    # Such a question is graded by `score` (published totals count it) and left out, counted, wherever a
    # prompt is needed (evaluate, train, predict).
    no_prompt: str = ""
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
    # invisible characters are shown as escapes: "990A\u200b1" is not confused with 990A1
    text = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cf" else c for c in text)
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


# The one choice alphabet: validation, prompts, the serving contract and the data suite all use it. A
# question with more choices than this is an error, never a silent cut.
LETTERS = "abcdefghijklmnopqrstuvwxyz"
MAX_CHOICES = len(LETTERS)


NOT_REGULAR = "not a regular file (a named pipe, device or socket); jmed reads only files and folders"


EXAM_ID = re.compile(r"^(\d{3})([A-Z])-?(\d+)")  # 112A1, 901B3, 120A-1


# Numbers as exams and JSON write them: ASCII digits, thousands grouped by "," or not, one optional decimal
# point. Not Python's float forms ("1_0", "1e3", "inf"), full-width or other-script digits, or "1,,,..".
NUMERIC = re.compile(r"^-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?$", re.ASCII)
_POINTS = re.compile(r"^[0-9]+(?:\.[0-9]+)?$", re.ASCII)


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
    # Every field the reader's files may carry (its Reader.fields); None: not checked. A field outside it
    # is counted per file, (file, name) -> [first line, records], and reported once as a warning.
    known_fields: frozenset | None = None
    unknown_fields: dict = field(default_factory=dict)

    @property
    def records(self) -> int:
        """Valid records read, counting those set aside as exclusions."""
        return len(self.items) + sum(len(v) for v in self.skipped.values())

    @property
    def questions(self) -> list[Question]:
        return [q for q in self.items if isinstance(q, Question)]


class Sink:
    """Collects errors and warnings for one file."""

    def __init__(self, ds: Dataset, file: str):
        self.ds, self.file = ds, file

    def error(self, line: int, fld: str, message: str) -> None:
        self.ds.errors.append(DataError(self.file, line, fld, message))

    def warn(self, line: int, fld: str, message: str) -> None:
        self.ds.warnings.append(DataError(self.file, line, fld, message))

    def fields(self, names, line: int) -> None:
        """Note the names the reader does not know (a misspelt `anwser` is otherwise silently ignored)."""
        known = self.ds.known_fields
        if known is None:
            return
        for name in names:
            if name not in known:
                seen = self.ds.unknown_fields.setdefault((self.file, str(name)), [line, 0])
                seen[1] += 1


def unknown_field_warnings(ds: Dataset) -> list[DataError]:
    """One warning per file and unknown field, with the closest known name when one is close."""
    import difflib

    out = []
    for (file, name), (line, count) in ds.unknown_fields.items():
        close = difflib.get_close_matches(name, sorted(ds.known_fields or ()), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        records = f"{count} record{'s' if count > 1 else ''}, first at line {line}"
        out.append(DataError(file, line, shown(name), f"not a field of {ds.format} data, ignored ({records}){hint}"))
    return out


# The longest stem or choice any step takes, in characters: validation refuses longer ones, so that
# evaluation never meets them, and serving answers 400 (jmed.contract). Published exam questions are
# under 3,000 characters; 20,000 leaves room for long case vignettes. Token limits: jmed.config.
MAX_TEXT_CHARS = 20_000


def length_errors(q: "Question") -> list[DataError]:
    """The parts of a question over MAX_TEXT_CHARS, named where it was read."""
    parts = [("stem", q.stem)] + [(f"choices[{i}]", c) for i, c in enumerate(q.choices)]
    return [
        DataError(q.file, q.line, name, f"{len(text)} characters; at most {MAX_TEXT_CHARS}")
        for name, text in parts
        if len(text) > MAX_TEXT_CHARS
    ]


def _japanese_score(text: str) -> float:
    """Share of characters that plausibly belong to Japanese or ASCII text (for encoding guesses)."""
    if not text:
        return 0.0
    good = sum(
        1
        for ch in text
        if ch.isascii()
        or "\u3040" <= ch <= "\u30ff"
        or "\u4e00" <= ch <= "\u9fff"
        or "\uff01" <= ch <= "\uff5e"
        or "\u3000" <= ch <= "\u303f"
    )
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


def read_text(path: Path, sink: Sink) -> str | None:
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
    return "\n".join(
        line.decode(enc or "utf-8", errors="replace") if i in bad else line.decode("utf-8")
        for i, line in enumerate(lines)
    )


def read_jsonl(path: Path, sink: Sink):
    """(line number, object) for each non-blank line; invalid JSON and non-objects are errors."""
    text = read_text(path, sink)
    if text is None:
        return
    for n, line in enumerate(lines(text), 1):
        if not line.strip():
            continue
        obj = loads_line(line, n, sink)
        if obj is BAD:
            continue
        if not isinstance(obj, dict):
            sink.error(n, "", f"expected a JSON object, got {type_name(obj)}")
            continue
        if text_ok(obj, n, sink):
            yield n, obj


BAD = object()


def visible(text: str) -> str:
    """`text` without invisible format characters (zero-width spaces and joiners, BOMs, bidi controls:
    Unicode category Cf). Text made only of them is blank: a stem of three zero-width spaces is no
    question, and two choices that differ only by them are the same choice."""
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


# Bidi overrides and isolates reorder what a reader sees (a "Trojan source" stem): a warning, never silent.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def lines(text: str) -> list[str]:
    """JSON lines split as JSON Lines defines them, at "\n" (a "\r" before it dropped). Not at U+2028,
    U+0085 or the other breaks `str.splitlines` knows: JSON allows them raw inside strings, and `jmed
    predict` writes them so."""
    return [line.removesuffix("\r") for line in text.split("\n")]


class DuplicateKey(ValueError):
    """A JSON object that names a key twice: JSON keeps the last value silently, jmed refuses it."""


def _no_duplicates(pairs):
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def loads_line(text: str, n: int, sink: "Sink"):
    """json.loads, with its failures as errors at line `n` (returns BAD): invalid JSON, and nesting
    deeper than Python's parser can follow (which raises RecursionError, not a JSON error)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except DuplicateKey as exc:
        sink.error(n, str(exc), f"the key {shown(str(exc))} appears twice in one object (JSON would keep the last)")
    except json.JSONDecodeError as exc:
        sink.error(exc.lineno + n - 1, "", f"invalid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        sink.error(n, "", "invalid JSON: nested too deeply (about a thousand levels of [ or { or more)")
    return BAD


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
            children.append(
                (f"{where}.{key}" if where and isinstance(key, str) else f"{where}[{key}]" if where else str(key), v)
            )
        stack.extend(reversed(children))
    return None


def text_ok(obj, n: int, sink: "Sink") -> bool:
    if isinstance(obj, dict):
        sink.fields(obj.keys(), n)
    found = bad_text(obj)
    if found:
        sink.error(n, found[0], found[1])
    return found is None


def jsonl_objects(path) -> tuple[list[tuple[int, dict]], list[DataError]]:
    """Every JSON object of a JSONL file with its line number, and an error per bad line or file
    (not UTF-8, invalid JSON, not an object): for prediction and question files outside the loaders."""
    path = Path(path)
    ds = Dataset(str(path), "jsonl")
    objects = list(read_jsonl(path, Sink(ds, str(path))))
    return objects, ds.errors


def type_name(value) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def check_fields(obj: dict, spec: dict, n: int, sink: Sink) -> bool:
    """Check required fields and their types; every problem is reported. True when all are fine."""
    ok = True
    for name, kind in spec.items():
        if name not in obj:
            sink.error(n, name, "missing field")
            ok = False
        elif not isinstance(obj[name], kind) or (isinstance(obj[name], bool) and kind in (int, (str, int))):
            # true is not an id or a count (points reports its own bool error: `check_points`)
            names = {str: "a string", list: "a list", bool: "a boolean (true/false)", int: "an integer"}
            want = names.get(kind) or (
                "a number or a numeric string" if float in kind else " or ".join(names[k] for k in kind)
            )
            sink.error(n, name, f"expected {want}, got {type_name(obj[name])}")
            ok = False
    return ok


def placeholder_choices(answer, reason: str) -> tuple[str, ...]:
    """Stand-ins for choices a reader cannot separate from the text (a table, the stem): five, as the exam
    has, or as many as the gold letters reach, so the letters of predictions can still be graded."""
    letters = [a for s in answer for a in s if len(a) == 1 and a in LETTERS]
    n = max(5, max((LETTERS.index(a) + 1 for a in letters), default=0))
    return tuple(f"（選択肢{LETTERS[i]}: {reason}）" for i in range(n))


def check_choices(value: list, n: int, sink: Sink, fld: str = "choices") -> tuple[str, ...] | None:
    bad = [i for i, c in enumerate(value) if not isinstance(c, str)]
    if bad:
        sink.error(n, fld, f"choice {bad[0] + 1} is {type_name(value[bad[0]])}, expected a string")
        return None
    if len(value) > MAX_CHOICES:  # prompts label choices a-z: a 27th would be dropped from every prompt
        sink.error(n, fld, f"{len(value)} choices; at most {MAX_CHOICES} (labelled {LETTERS[0]}-{LETTERS[-1]})")
        return None
    return tuple(value)


def check_answer(value: list, n_choices: int, n: int, sink: Sink, fld: str = "answer"):
    """Answer list -> acceptable answer sets. "a or d" -> two sets; numeric questions keep the string."""
    if not value:
        sink.error(n, fld, "empty answer")
        return None
    if not all(isinstance(a, str) for a in value):
        sink.error(n, fld, "expected a list of strings")
        return None
    if n_choices == 0:  # numeric entry: one digit string such as "26" or "04"
        if len(value) != 1 or not NUMERIC.match(value[0].strip()):
            sink.error(n, fld, f"numeric-entry question (no choices) needs one number, got {shown(value)}")
            return None
        return ((value[0].strip(),),)
    tokens = [a.strip().lower() for a in value]
    if any(t == "," for t in tokens):  # a stray "," between letters (seen in JJSIMQA 107_888-26)
        sink.warn(n, fld, f'stray "," in answer {shown(value)}, read as {shown([t for t in tokens if t != ","])}')
        tokens = [t for t in tokens if t != ","]
    if len(tokens) == 1 and " or " in tokens[0]:
        sets = [(t.strip(),) for t in tokens[0].split(" or ")]
    else:
        sets = [tuple(sorted(tokens))]
    allowed = LETTERS[:n_choices]
    for s in sets:
        for letter in s:
            if len(letter) != 1 or letter not in allowed:
                sink.error(n, fld, f"letter {shown(letter)} outside {n_choices} choices")
                return None
        if len(set(s)) != len(s):
            sink.error(n, fld, f"repeated letter in {list(s)}")
            return None
    return tuple(sets)


def check_points(value, n: int, sink: Sink) -> float | None:
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
    if isinstance(value, str) and not _POINTS.match(value.strip()):  # "1_0", "１", "1e3" are no exam's points
        sink.error(n, "points", f"not a number as exams write points (ASCII digits, one decimal point): {shown(value)}")
        return None
    return points


def json_records(path: Path, sink: Sink):
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
        sink.error(
            1,
            "",
            "invalid JSON: nested too deeply (about a thousand levels of [ or { or more); "
            "the file cannot be read further",
        )
        return
    if not isinstance(data, list):
        sink.error(1, "", f"expected a JSON list of questions, got {type_name(data)}")
        return
    decoder, pos = json.JSONDecoder(object_pairs_hook=_no_duplicates), text.index("[") + 1
    for obj in data:  # walk the text again to find where each element starts (and refuse repeated keys)
        while text[pos] in " \t\r\n,":
            pos += 1
        line = text.count("\n", 0, pos) + 1
        try:
            _, end = decoder.raw_decode(text, pos)
        except DuplicateKey as exc:
            sink.error(
                line, str(exc), f"the key {shown(str(exc))} appears twice in one object (JSON would keep the last)"
            )
            _, end = json.JSONDecoder().raw_decode(text, pos)
            pos = end
            continue
        pos = end
        if not isinstance(obj, dict):
            sink.error(line, "", f"expected a JSON object, got {type_name(obj)}")
            continue
        if text_ok(obj, line, sink):
            yield line, obj


def walk(root: Path):
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


def unreadable_entries(root: Path) -> list[tuple[Path, str]]:
    """(path, why) for what a folder holds that no reader can open: a broken link, a pipe or a socket.
    Reading a folder reports them, so that no question is left out without a word."""
    import os

    out = []
    for folder, _ in walk(root):
        for e in sorted(os.scandir(folder), key=lambda e: e.name):
            if e.is_symlink() and not os.path.exists(e.path):
                out.append((Path(e.path), "a broken link"))
            elif not e.is_dir() and not e.is_file():
                out.append((Path(e.path), "not a regular file"))
    return out


def data_files(path: Path) -> list[Path]:
    """The question/record files under a folder (IgakuQA year folder or whole data/ tree)."""
    files = []
    for folder, names in walk(path):
        files += [folder / n for n in names if n.lower().endswith((".jsonl", ".json", ".csv"))]
    return sorted(
        p
        for p in files
        if not p.name.endswith(("_metadata.jsonl", "_translate.jsonl")) and not p.name.startswith("metadata_")
    )  # YakugakuQA's metadata_103.jsonl


def folder_year(path: Path) -> int | None:
    name = path.parent.name
    return int(name) if name.isdigit() and len(name) == 4 else None


IGAKUQA_FIELDS = {
    "problem_id": str,
    "problem_text": str,
    "choices": list,
    "text_only": bool,
    "answer": list,
    "points": (str, int, float),
}
# what IgakuQA's files carry besides: `<name>_metadata.jsonl` and `<name>_translate.jsonl`
IGAKUQA_KNOWN = frozenset(IGAKUQA_FIELDS) | {
    "category",
    "kinki",
    "year",
    "reason",
    "human_accuracy",
    "breakdown",
    "problem_text_en",
    "choices_en",
}
