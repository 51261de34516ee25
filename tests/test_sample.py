"""The bundled sample data (jmed/sample): exact counts of every feature, format and consistency.

Uses only json and pathlib so it does not depend on jmed.data.
"""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "jmed" / "sample"
IGAKUQA = ROOT.parent / "shared" / "datasets" / "igakuqa" / "data"

QUESTION_KEYS = {"problem_id", "problem_text", "choices", "text_only", "answer", "points"}
META_KEYS = {"problem_id", "category", "kinki", "reason", "year", "human_accuracy", "breakdown"}
LETTERS = "abcdefgh"


def read(name):
    path = SAMPLE / name
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{name}:{n}: empty line"
        rows.append(json.loads(line))
    return rows


TRAIN, TEST = read("train.jsonl"), read("test.jsonl")
TRAIN_META, TEST_META = read("train_metadata.jsonl"), read("test_metadata.jsonl")
ALL = TRAIN + TEST
META = {m["problem_id"]: m for m in TRAIN_META + TEST_META}


def choose_n(stem):
    m = re.search(r"([2-9])つ選べ。$", stem)
    return int(m.group(1)) if m else 1


def test_counts_and_ids():
    assert (len(TRAIN), len(TEST)) == (44, 20)
    ids = [q["problem_id"] for q in ALL]
    assert len(set(ids)) == 64
    assert all(re.fullmatch(r"901[A-F]\d{1,2}", q["problem_id"]) for q in TRAIN)
    assert all(re.fullmatch(r"902[A-F]\d{1,2}", q["problem_id"]) for q in TEST)
    assert Counter(q["problem_id"][3] for q in TRAIN) == {"A": 8, "B": 10, "C": 6, "D": 6, "E": 8, "F": 6}
    assert Counter(q["problem_id"][3] for q in TEST) == {"A": 3, "B": 4, "C": 3, "D": 3, "E": 4, "F": 3}


@pytest.mark.parametrize("q", ALL, ids=lambda q: q["problem_id"])
def test_question_format(q):
    assert set(q) == QUESTION_KEYS
    assert isinstance(q["problem_text"], str) and q["problem_text"].strip()
    assert isinstance(q["choices"], list) and all(isinstance(c, str) and c for c in q["choices"])
    assert isinstance(q["text_only"], bool)
    assert q["points"] in {"0", "1", "3"}
    assert isinstance(q["answer"], list) and q["answer"]
    if q["choices"]:
        assert len(q["choices"]) == 5 and len(set(q["choices"])) == 5
        assert not any(re.match(r"^[a-eA-Eａ-ｅ][\.．、\s　]", c) for c in q["choices"])  # no letter prefixes
        assert q["answer"] == sorted(set(q["answer"]))
        assert set(q["answer"]) <= set(LETTERS[: len(q["choices"])])
        assert len(q["answer"]) == choose_n(q["problem_text"])
        if len(q["answer"]) == 1:
            assert q["problem_text"].endswith("どれか。")
    else:
        assert len(q["answer"]) == 1 and q["answer"][0].isdigit()
        assert "解答：" in q["problem_text"]
    assert ("写真を別に示す。" in q["problem_text"]) == (not q["text_only"])
    if q["points"] == "3":
        assert q["problem_id"][3] in "BE"


def test_metadata_one_to_one():
    for qs, meta, year in [(TRAIN, TRAIN_META, 2024), (TEST, TEST_META, 2025)]:
        assert [m["problem_id"] for m in meta] == [q["problem_id"] for q in qs]
        for m in meta:
            assert set(m) == META_KEYS
            assert m["year"] == year
            assert isinstance(m["category"], str) and m["category"]
            assert isinstance(m["reason"], str) and m["reason"]
            assert m["human_accuracy"] is None and m["breakdown"] == []
    for q in ALL:
        kinki = META[q["problem_id"]]["kinki"]
        assert set(kinki) <= set(LETTERS[: len(q["choices"])])
        assert not set(kinki) & set(q["answer"])  # a correct answer is never contraindicated


def test_feature_counts():
    def count(qs):
        return {
            "single": sum(len(q["answer"]) == 1 and bool(q["choices"]) for q in qs),
            "two": sum(len(q["answer"]) == 2 for q in qs),
            "three": sum(len(q["answer"]) == 3 for q in qs),
            "image": sum(not q["text_only"] for q in qs),
            "numeric": sum(not q["choices"] for q in qs),
            "points": Counter(q["points"] for q in qs),
            "kinki": sum(bool(META[q["problem_id"]]["kinki"]) for q in qs),
        }

    assert count(TRAIN) == {
        "single": 35,
        "two": 7,
        "three": 2,
        "image": 3,
        "numeric": 0,
        "points": {"1": 34, "3": 9, "0": 1},
        "kinki": 8,
    }
    assert count(TEST) == {
        "single": 14,
        "two": 3,
        "three": 2,
        "image": 2,
        "numeric": 1,
        "points": {"1": 16, "3": 3, "0": 1},
        "kinki": 2,
    }
    assert sum(int(q["points"]) for q in TRAIN) == 61
    assert sum(int(q["points"]) for q in TEST) == 25
    numeric = [q for q in ALL if not q["choices"]]
    assert [(q["problem_id"], q["answer"]) for q in numeric] == [("902F1", ["25"])]
    assert len({META[q["problem_id"]]["category"] for q in ALL}) == 18


def test_instructions():
    rows = read("instructions.jsonl")
    assert len(rows) == 20
    assert len({r["id"] for r in rows}) == 20
    for r in rows:
        assert set(r) == {"id", "instruction", "input", "output"}
        assert all(isinstance(r[k], str) for k in r)
        assert r["instruction"].strip() and r["output"].strip()
    assert sum(r["input"] == "" for r in rows) == 3


def test_no_exact_train_test_stem_overlap():
    assert not {q["problem_text"] for q in TRAIN} & {q["problem_text"] for q in TEST}


def test_not_copied_from_igakuqa():
    if not IGAKUQA.is_dir():
        pytest.skip(f"{IGAKUQA} is absent; the copy check needs the shared IgakuQA data")
    real = set()
    for path in IGAKUQA.rglob("*.jsonl"):
        if path.name.endswith(("_metadata.jsonl", "_translate.jsonl")):
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                real.add(json.loads(line)["problem_text"].strip())
    assert len(real) > 1900
    assert not {q["problem_text"].strip() for q in ALL} & real
