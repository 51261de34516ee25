"""Read every supported format into one `Question` model (DESIGN.md §3); filters, splits, digests.

Loaders never drop input silently: a malformed record becomes a `DataError` naming file, line and
field; a known, documented kind (image question, numeric entry, points 0) stays in the data and is
counted by `exclusions()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    category: str = ""
    source: str = ""  # igakuqa | jmle2026 | jjsimqa | jmmlu | sample | ...
    accept_any: bool = False  # official correction: every answer counts as correct (116A71)
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


@dataclass(frozen=True)
class DataError:
    file: str
    line: int  # 0 when the error concerns the whole file
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class DataLoadError(ValueError):
    """Raised by `load_questions(..., strict=True)` when any record is invalid; carries every error."""

    def __init__(self, errors: list[DataError]):
        self.errors = errors
        shown = "\n".join(str(e) for e in errors[:20])
        more = f"\n… and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} data error(s):\n{shown}{more}")
