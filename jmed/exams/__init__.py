"""Exam kinds, one module each: what an exam's rules are, whatever dataset its questions come from.

A kind module (`jmed/exams/<name>.py`) defines `EXAM = ExamKind(...)`: its year mapping, its required
section, its pass rule with the source of that rule, its official corrections and the words prompts use
for it. Modules in this folder are found and registered on first use: adding an exam kind touches no
other file. Pure data and stdlib: imported by the CLI, prompts and scoring alike.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ExamKind:
    name: str  # the value of --exam-kind and Question.exam_kind
    title: str  # the exam as prompts name it: 医師国家試験
    knowledge: str  # the field as the authors' preamble names it: 医学知識
    year_offset: int | None = None  # calendar year = exam number + offset (exam held in Jan/Feb of that year)
    required_blocks: tuple[str, ...] = ()  # blocks of the required (必修) section, scored apart
    # (required points, required total, general points, general total, kinki selected, year, kinki known)
    # -> {"passed", "verdict", "general_line"}; None: no pass rule is known for this exam
    pass_rule: Callable[..., dict] | None = None
    pass_source: str = ""  # where the pass rule comes from
    accept_any: frozenset[str] = field(default_factory=frozenset)  # official corrections: every answer scores
    # Which questions are in the required section, for a section that is not whole blocks (the nursing
    # exam's questions 1-25 of each session): (question) -> bool. Default: its block is in required_blocks.
    required: Callable[[object], bool] | None = None

    def is_required(self, question) -> bool:
        if self.required is not None:
            return self.required(question)
        return getattr(question, "block", "") in self.required_blocks

    def year(self, exam: str) -> int | None:
        """Calendar year of exam number `exam` ("112" -> 2018 for the medical exam); None if unknown."""
        if self.year_offset is not None and exam.isdigit() and 100 <= int(exam) <= 199:
            return int(exam) + self.year_offset
        return None


_KINDS: dict[str, ExamKind] = {}


def kinds() -> dict[str, ExamKind]:
    """Every registered exam kind by name, in module name order ("other" last)."""
    if not _KINDS:
        found = []
        for mod in pkgutil.iter_modules(__path__):
            exam = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "EXAM", None)
            if exam is not None:  # a helper module shared by kinds (e.g. a common pass rule)
                found.append(exam)
        found.sort(key=lambda e: (e.name == "other", e.name))
        _KINDS.update((e.name, e) for e in found)
    return _KINDS


def names() -> tuple[str, ...]:
    return tuple(kinds())


def get(name: str) -> ExamKind:
    """The exam kind `name`; a clear error naming the known ones otherwise."""
    try:
        return kinds()[name]
    except KeyError:
        raise ValueError(f"unknown exam kind {name!r}; choose one of: {', '.join(kinds())}") from None


def exam_year(exam: str, kind: str = "medical") -> int | None:
    """Calendar year of a Japanese national exam number: medical 112 -> 2018, dental 116 -> 2023,
    pharmacist 109 -> 2024; None for other exams and other numbers."""
    return kinds()[kind].year(exam) if kind in kinds() else None
