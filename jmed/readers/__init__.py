"""Exam datasets, one reader module each, registered by being in this folder.

A reader module (`jmed/readers/<name>.py`) defines `READER = Reader(...)`: how its files are told apart
from the others' (a content test and a priority, highest tried first), how a file is read into
`Question`s (field specs, id pattern, corrections), which files of a folder it reads, and the dataset's
own answer parser (`jmed score --parsing official` on predictions made elsewhere). `--format` choices,
the CLI help, auto-detection and the official scorers are all derived from what is registered here;
`tests/test_readers_contract.py` runs every registered reader through detect, read, validate and score.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jmed.records import Dataset, data_files


@dataclass(frozen=True)
class Probe:
    """What detection looks at: a file's path, its first 64 KiB and its first JSON object line."""

    path: Path
    head: str
    obj: dict | None  # the first line that parses as a JSON object; None if none does

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()


@dataclass(frozen=True)
class Reader:
    name: str  # the --format value, and Question.source of what it reads
    help: str  # one line for `--format` help: the dataset and where it is published
    read: Callable[[Path, Dataset, bool], None]  # one file into ds.items / ds.errors; bool: --translate
    detect: Callable[[Probe], bool]
    priority: int  # detection order, highest first: a more specific test before a more general one
    official: Callable | None = None  # the dataset's own scorer: (question, text) -> letters or None
    files: Callable[[Path, Dataset], list[Path]] = lambda folder, ds: data_files(folder)  # a folder's files
    folder: Callable[[Path], bool] | None = None  # recognises a whole folder (a checkout) before its files
    questions: bool = True  # False: instruction records for training, not exam questions
    # The gold answer written as this dataset's own answers are ("c,e", IgakuQA119's "ce", YakugakuQA's
    # "3,5"): what its official scorer reads as right. The contract test scores it as a perfect system.
    answer_text: Callable[..., str] = lambda q: ",".join(q.answer[0]) if q.answer else ""
    # Every field its files may carry (question, metadata and translation files alike); another field is
    # warned about once per file, with the closest known name. None: fields are not checked.
    fields: frozenset[str] | None = None


_READERS: dict[str, Reader] = {}


def readers() -> dict[str, Reader]:
    """Every registered reader by name (module order)."""
    if not _READERS:
        for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
            reader = getattr(importlib.import_module(f"{__name__}.{mod}"), "READER", None)
            if reader is not None:  # a helper module shared by readers
                _READERS[reader.name] = reader
    return _READERS


def names() -> tuple[str, ...]:
    return tuple(readers())


def get(name: str) -> Reader:
    try:
        return readers()[name]
    except KeyError:
        raise ValueError(f"unknown data format {name!r}; choose auto or one of: {', '.join(readers())}") from None


def by_priority() -> list[Reader]:
    return sorted(readers().values(), key=lambda r: -r.priority)


def official(source: str) -> Callable | None:
    """The own scorer of the dataset a question came from, if it has one (else IgakuQA's reference)."""
    reader = readers().get(source)
    return reader.official if reader else None


def probe(path: Path) -> Probe:
    head = path.read_bytes()[: 1 << 16].decode("utf-8-sig", errors="replace")
    obj = None
    for line in head.splitlines():
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # the reader reports it, line by line
            continue
        if isinstance(value, dict):
            obj = value
            break
    return Probe(path, head, obj)
