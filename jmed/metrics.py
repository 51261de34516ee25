"""Scoring, exactly as defined in DESIGN.md §5. Pure functions: no torch, mlflow or pandas.

Three protocols:
- letter: the model answers with letters ("d,e"). `official` parsing is IgakuQA's reference scorer
  (split on ",", sort, compare; nothing else); `lenient` parsing normalises model output first.
- text: the model answers with choice text (JMedLoRA / the 70B paper's harness): exact match,
  gestalt (difflib Ratcliff/Obershelp) score and gestalt accuracy with the k best choices.
- loglik: the k choices with the highest conditional log-likelihood.

Multi-answer questions are all-or-nothing everywhere. Corrections come from the data, not from ids:
`Question.answer` may hold several acceptable sets (112B30 "a or d") and `Question.accept_any`
makes a question correct for every prediction (116A71). Numeric-entry questions (no choices) are
compared as strings in the letter protocol and excluded from the text and loglik protocols.
"""
from __future__ import annotations

import re
import unicodedata
from difflib import SequenceMatcher
from typing import Iterable, Mapping, Sequence

from jmed.config import PARSINGS
from jmed.prompts import LETTERS, extract_response

OFFICIAL, LENIENT = PARSINGS
# jmed's own picks (log-likelihood and gestalt top-k, written "b,d") are read with IgakuQA's reference rules
# whatever the dataset: a dataset's own scorer (official parsing) is for predictions made elsewhere.
PICKS = "picks"

REQUIRED_BLOCKS = ("B", "E")  # 必修 (required) section of the JMLE
REQUIRED_LINE = 0.80  # required section: at least 80 % of its points
KINKI_LIMIT = 4  # fail with 4 or more contraindicated choices selected (禁忌肢問題選択数 3問以下)
DEFAULT_GENERAL_LINE = 0.70  # general+clinical line for a year not in GENERAL_LINES: an approximation

# General+clinical pass line per exam year (必修を除いた一般問題及び臨床実地問題, 1 point each), as
# (points needed, points total) from MHLW's pass announcements (合格基準), or a fraction where only
# the rate was found. Sources (as quoted by secondary pages, checked 2026-11): 2018 (112th) 208/299
# (savingdoctor.com quoting MHLW); 2019 (113th) 209/296 (jmedj.co.jp); 2020 (114th) 217/299
# (医学界新聞, ishiyaku-k.com quoting MHLW); 2021 (115th) 209/300 (newtongym8.com quoting MHLW);
# 2022 (116th) 214/297 (doctor.mynavi.jp quoting MHLW); 2023 (117th) 74.6 % (PLOS Digit Health
# 2024, Tanaka et al.); 2024 (118th) 76.7 % (medilink-study.com); 2025 (119th) 221/300
# (mama.smt.docomo.ne.jp). Other years (e.g. 2026, the 120th) are unknown: DEFAULT_GENERAL_LINE.
GENERAL_LINES: dict[int, tuple[float, float]] = {
    2018: (208, 299),
    2019: (209, 296),
    2020: (217, 299),
    2021: (209, 300),
    2022: (214, 297),
    2023: (0.746, 1),
    2024: (0.767, 1),
    2025: (221, 300),
}


def general_line(year: int | None) -> float:
    """The general+clinical pass line of an exam year, as a fraction of its points."""
    if year in GENERAL_LINES:
        need, total = GENERAL_LINES[year]
        return need / total
    return DEFAULT_GENERAL_LINE


# ---- letter protocol: parsing -----------------------------------------------------------------

_OPEN = r"(\[「『【<"
_CLOSE = r")\]」』】>"
_ITEM = rf"[{_OPEN}]?[ \t]*[a-z][ \t]*[{_CLOSE}]?"
_SEP = r"(?:\s*[,、，・/&;]\s*|\s*(?:と|および|及び)\s*|\s+)"
# A run of single letters ("c", "c, e", "(c)", "c、e", "c と e") not followed by another Latin letter,
# so that words ("cat", "I think") are not read as answers.
# Nor is a letter that starts a word in Japanese: "B群連鎖球菌", "A型", "T波" (kanji, katakana, digits).
_WORD = r"a-z0-9\u3400-\u9fff\u30a0-\u30ff\uff66-\uff9f"
_RUN = re.compile(rf"{_ITEM}(?:{_SEP}{_ITEM})*(?![{_WORD}])", re.IGNORECASE)
# A re-listing of the choices is not an answer: two or more list labels ("a. …\nb. …", "1. 2. 3.").
_LIST_LABEL = re.compile(r"(?:^|(?<=\s))([a-z]|[0-9]{1,2})[ \t]*[.:)]", re.IGNORECASE)
_LETTER = re.compile(r"(?<![a-z])[a-z](?![a-z])", re.IGNORECASE)
# Letters written together, IgakuQA119's own answer style and common in model output: "ce", "bde".
# Read only as a strictly ascending run of distinct letters standing alone, so words are not answers
# ("bad", "dead", "cab"); "ace" alone would still read as a, c, e.
_GLUED = re.compile(rf"[{_OPEN}]?([a-j]{{2,10}})[{_CLOSE}]?(?![{_WORD}])", re.IGNORECASE)
# A hedge between choices is not an answer: "a or d", "aまたはd", "a もしくは d".
_HEDGE = re.compile(rf"{_ITEM}\s*(?:or|または|もしくは|あるいは)\s*{_ITEM}(?![{_WORD}])", re.IGNORECASE)
# Where an answer is announced: 「答え：c」, "答え: c", "正解はc", "Answer: c", "the answer is c".
_MARKER = re.compile(r"(?:解答|正解|回答|答え|答|answer)\s*(?:は|:|=|is|->|→)?\s*", re.IGNORECASE)


def normalize(text: str) -> str:
    """NFKC (full-width letters, digits, punctuation and spaces become ASCII) and strip."""
    return unicodedata.normalize("NFKC", text).strip()


def _letters_at(text: str, pos: int) -> tuple[str, ...] | None:
    m = _RUN.match(text, pos)
    if m:
        return tuple(ch.lower() for ch in _LETTER.findall(m.group(0)))
    m = _GLUED.match(text, pos)
    if m:
        run = m.group(1).lower()
        if all(a < b for a, b in zip(run, run[1:])):
            return tuple(run)
    return None


def parse_letters(text: str | None, n_choices: int, mode: str = LENIENT) -> tuple[str, ...] | None:
    """Letters of a prediction, sorted; None when it cannot be read as letters of this question.

    official: IgakuQA's reference — split on ",", sort; nothing else (duplicates are kept, so
    "a,a" stays wrong). Items that are not letters of the question's choices make it unparseable
    (they could never be correct). lenient: NFKC and whitespace normalisation, upper case, 「答え：c」,
    "c、e", "(c)", letters written together ("ce"), a trailing explanation; duplicates dropped; letters
    outside the choices → None; a hedge ("a or d") → None.
    Not answers (→ None) in lenient mode either: a re-listing of the choices ("a. 肺炎\nb. 結核",
    "1. … 2. …"), and a letter that begins a word ("B群連鎖球菌").
    """
    if text is None:
        return None
    valid = LETTERS[:n_choices]
    if mode == OFFICIAL:
        items = sorted(text.split(","))
        return tuple(items) if all(len(i) == 1 and i in valid for i in items) else None
    if mode != LENIENT:
        raise ValueError(f"unknown parsing {mode!r}; choose one of: {', '.join(PARSINGS)}")
    s = normalize(text)
    if len({m.group(1).lower() for m in _LIST_LABEL.finditer(s)}) >= 2:
        return None  # the choices (or numbered lines) listed back, not an answer
    starts = [0] + [m.end() for m in _MARKER.finditer(s)]
    for pos in starts:
        if _HEDGE.match(s, pos):
            return None  # undecided between choices: counted as unparsed, never read as its first letter
        letters = _letters_at(s, pos)
        if letters and all(ch in valid for ch in letters):
            return tuple(sorted(set(letters)))
    return None


def parse_numeric(text: str | None, mode: str = LENIENT) -> tuple[str, ...] | None:
    """A numeric-entry answer as a digit string: official exact, lenient NFKC + strip; "" → None."""
    if text is None:
        return None
    s = text if mode == OFFICIAL else normalize(text)
    return (s,) if s else None


def _igakuqa119_official(question, text: str) -> tuple[str, ...] | None:
    """IgakuQA119's own scorer (src/grading_logic.py): lower case; "[", "]", "," and spaces removed; the
    characters sorted; equal to the gold answer so treated. Numbers are compared the same way, as it does."""
    def canon(s: str) -> str:
        return "".join(sorted(s.strip().lower().replace("[", "").replace("]", "").replace(",", "").replace(" ", "")))

    got = canon(text)
    if not got:
        return None
    for gold in question.answer:  # 119E28's "a or c" is two acceptable sets, as its scorer's special rule
        if got == canon("".join(gold)):
            return gold
    if question.numeric:
        return (got,)
    return tuple(got) if all(ch in LETTERS[: len(question.choices)] for ch in got) else None


def _yakugakuqa_official(question, text: str) -> tuple[str, ...] | None:
    """YakugakuQA's scorer (check.py): the response equals the choice numbers joined by "," ("2,3")."""
    if not re.fullmatch(r"[1-9](?:,[1-9])*", text):
        return None
    numbers = [int(d) for d in text.split(",")]
    if numbers != sorted(set(numbers)) or numbers[-1] > len(question.choices):
        return None
    return tuple(LETTERS[d - 1] for d in numbers)


def _jmle2026_official(question, text: str) -> tuple[str, ...] | None:
    """JMLE2026-Bench's scorer (benchmark.py): the rest of the line after 「【回答】」; a calculation answer as
    is; otherwise markdown marks removed, split on commas, 「、」 and spaces, the single letters a-e kept."""
    m = re.search(r"【回答】\s*(.+)", text)
    if not m:
        return None
    answer = m.group(1).strip()
    if question.numeric:
        return (answer,)
    tokens = re.split(r"[,、\s]+", re.sub(r"[*_`#]", "", answer).strip())
    letters = sorted({t.lower() for t in tokens if re.fullmatch(r"[a-eA-E]", t)})
    return tuple(letters) or None


def _medllm_official(question, text: str) -> tuple[str, ...] | None:
    """The medLLM QA benchmark's scorer (scripts/evaluate_main.py): NFKC, 「、」 and 「，」 read as ",", split
    on ",", each item stripped, sorted; equal to the gold list. (Its 116A71 rule is keyed by id alone, so it
    also credits the dental exam's 116A71; jmed keys corrections by exam kind and does not.)"""
    items = sorted(p.strip() for p in normalize(text).replace("、", ",").replace("，", ",").split(","))
    return tuple(items) if any(items) else None


# Official parsing of predictions made elsewhere, per data source: the dataset's own scorer.
DATASET_SCORERS = {"igakuqa119": _igakuqa119_official, "jmle2026": _jmle2026_official,
                   "yakugakuqa": _yakugakuqa_official, "medllm": _medllm_official}


def parse_answer(question, text: str | None, mode: str = LENIENT) -> tuple[str, ...] | None:
    """Letters (or the numeric string) a prediction gives for `question`; None = unparseable. Official
    parsing is the dataset's own scorer: IgakuQA's reference, or IgakuQA119's, JMLE2026-Bench's,
    YakugakuQA's or the medLLM QA benchmark's for their questions."""
    own = DATASET_SCORERS.get(getattr(question, "source", "")) if mode == OFFICIAL else None
    if mode == PICKS:
        mode = OFFICIAL
    if own is not None and text is not None:
        return own(question, text)
    if question.numeric:
        return parse_numeric(text, mode)
    return parse_letters(text, len(question.choices), mode)


def is_correct(question, letters: Sequence[str] | None) -> bool:
    """Set-exact: the sorted letters equal one acceptable answer set; accept_any is always correct."""
    if question.accept_any:
        return True
    if letters is None:
        return False
    return tuple(sorted(letters)) in question.answer


def kinki_selected(question, letters: Sequence[str] | None) -> bool:
    """Whether the answer includes a contraindicated choice (禁忌肢)."""
    return bool(letters) and bool(set(letters) & set(question.kinki))


# ---- letter protocol: aggregates --------------------------------------------------------------


def _gold_str(question) -> str:
    return "|".join(",".join(s) for s in question.answer)


def letter_rows(questions: Iterable, predictions: Mapping[str, str], parsing: str = LENIENT) -> list[dict]:
    """One row per question: prediction, parsed answer, gold, correct, points, flags."""
    rows = []
    for q in questions:
        pred = predictions.get(q.id)
        parsed = parse_answer(q, pred, parsing)
        correct = pred is not None and is_correct(q, parsed)  # missing is wrong, even where any answer counts
        rows.append({
            "id": q.id, "year": q.year, "block": q.block, "category": q.category,
            "points": q.points, "prediction": pred,
            "parsed": None if parsed is None else ",".join(parsed),
            "gold": "*" if q.accept_any else _gold_str(q),
            "correct": correct, "points_scored": q.points if correct else 0,
            "missing": pred is None, "unparsed": pred is not None and parsed is None,
            "kinki": kinki_selected(q, parsed), "kinki_known": getattr(q, "kinki_known", False),
            "exam_kind": getattr(q, "exam_kind", "medical"),
        })
    return rows


def _frac(a: float, b: float) -> float:
    return a / b if b else 0.0


def _num(x: float):
    """Points as int when whole (IgakuQA), float otherwise (JJSIMQA)."""
    return int(x) if float(x).is_integer() else x


def _aggregate(rows: list[dict], year: int | None = None, with_pass: bool = False) -> dict:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    points = sum(r["points_scored"] for r in rows)
    total = sum(r["points"] for r in rows)
    req = [r for r in rows if r["block"] in REQUIRED_BLOCKS]
    gen = [r for r in rows if r["block"] not in REQUIRED_BLOCKS]
    req_points = sum(r["points_scored"] for r in req)
    req_total = sum(r["points"] for r in req)
    gen_points = sum(r["points_scored"] for r in gen)
    gen_total = sum(r["points"] for r in gen)
    kinki = sum(r["kinki"] for r in rows)
    out = {
        "questions": n, "correct": correct, "accuracy": _frac(correct, n),
        "points": _num(points), "points_total": _num(total), "score": _frac(points, total),
        "required_points": _num(req_points), "required_total": _num(req_total),
        "required_score": _frac(req_points, req_total),
        "general_points": _num(gen_points), "general_total": _num(gen_total),
        "general_score": _frac(gen_points, gen_total),
        "unparsed": sum(r["unparsed"] for r in rows), "missing": sum(r["missing"] for r in rows),
        "kinki_selected": kinki,
    }
    kinds = sorted({r.get("exam_kind", "medical") for r in rows})
    if with_pass and kinds != ["medical"]:  # dental and pharmacist exams have other rules: never a medical verdict
        out.update(passed=None, verdict=f"no pass rule for this exam ({'/'.join(kinds)}): jmed applies only the "
                                        "medical licensing exam's rule")
    elif with_pass:
        out.update(pass_fail(req_points, req_total, gen_points, gen_total, kinki, year,
                             kinki_known=all(r.get("kinki_known", False) for r in rows)))
    return out


def pass_fail(required_points, required_total, general_points, general_total, kinki: int,
              year: int | None, kinki_known: bool = True) -> dict:
    """The exam's pass rule (datasets README): required ≥ 80 % of its points, general+clinical ≥ the
    year's line, fewer than 4 contraindicated choices. No verdict (`passed` None, `verdict` says why)
    without an input the rule needs: both sections (else it is not a whole exam), and the
    contraindicated choices of every question (`kinki_known`; without them 0 selected would be a guess)."""
    line = general_line(year)
    if not required_total or not general_total:
        return {"passed": None, "verdict": "none (not a whole exam: the rule needs the required and general blocks)",
                "general_line": line}
    scores_pass = (required_points >= REQUIRED_LINE * required_total - 1e-9
                   and general_points >= line * general_total - 1e-9)
    if not kinki_known:
        if not scores_pass:  # failing on points needs no contraindication data
            return {"passed": False, "verdict": "FAIL (on points; no kinki data)", "general_line": line}
        return {"passed": None, "verdict": "unknown (no kinki data: the contraindicated choices the rule counts "
                                           "are not in this data)", "general_line": line}
    ok = scores_pass and kinki < KINKI_LIMIT
    return {"passed": ok, "verdict": "PASS" if ok else "FAIL", "general_line": line}


def _year_key(year) -> str:
    return str(year) if year is not None else "unknown"


def letter_summary(questions: Sequence, predictions: Mapping[str, str], parsing: str = LENIENT) -> dict:
    """Accuracy, exam score, required-section score, unparsed, missing, kinki; per year (with pass/
    fail) and per category. accuracy = correct / questions; score = Σ points of correct / Σ points."""
    rows = letter_rows(questions, predictions, parsing)
    out = {"protocol": "letter", "parsing": parsing, **_aggregate(rows)}
    out["missing_ids"] = [r["id"] for r in rows if r["missing"]]
    years = sorted({r["year"] for r in rows}, key=lambda y: (y is None, y or 0))
    out["by_year"] = {
        _year_key(y): _aggregate([r for r in rows if r["year"] == y], y, with_pass=True) for y in years
    }
    cats = sorted({r["category"] for r in rows})
    out["by_category"] = {
        (c or "unknown"): {k: v for k, v in _aggregate([r for r in rows if r["category"] == c]).items()
                           if k in ("questions", "correct", "accuracy", "points", "points_total", "score")}
        for c in cats
    }
    return out


# ---- text protocol ----------------------------------------------------------------------------


def clean(text: str) -> str:
    """Text protocol normalisation: "." removed, stripped."""
    return text.replace(".", "").strip()


def gestalt(a: str, b: str) -> float:
    """Ratcliff/Obershelp similarity, 2·M/T: difflib.SequenceMatcher(None, a, b).ratio()."""
    return SequenceMatcher(None, a, b).ratio()


def choice_scores(response: str, choices: Sequence[str]) -> list[float]:
    """Per choice c: (gestalt(c, R) + gestalt(R, c)) / 2, both cleaned."""
    r = clean(response)
    return [(gestalt(clean(c), r) + gestalt(r, clean(c))) / 2 for c in choices]


def topk(scores: Sequence[float], k: int) -> tuple[int, ...]:
    """Indices of the k highest scores, ties to the earlier index; returned in index order."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return tuple(sorted(order[: max(0, k)]))


def topk_by_gestalt(response: str, choices: Sequence[str], k: int) -> tuple[int, ...]:
    return topk(choice_scores(response, choices), k)


def loglik_pick(scores: Sequence[float], k: int) -> tuple[int, ...]:
    """Log-likelihood protocol: the k choices with the highest conditional log-likelihood."""
    return topk(scores, k)


SELECT_RE = re.compile(r"([0-9０-９]+|[一二三四五六七八九])\s*つ\s*選べ")
_KANJI = {c: i for i, c in enumerate("一二三四五六七八九", start=1)}


def stated_count(stem: str) -> int | None:
    """The N of 「Nつ選べ」 in a stem (2つ, ２つ, 二つ; "2つ 選べ"), or None when the stem states none."""
    m = SELECT_RE.search(stem)
    if not m:
        return None
    g = unicodedata.normalize("NFKC", m.group(1))
    return int(g) if g.isdigit() else _KANJI[g]


def n_select(stem: str) -> int:
    """k read from the stem's 「Nつ選べ」; 1 when absent."""
    return stated_count(stem) or 1


def gold_indices(question) -> tuple[tuple[int, ...], ...]:
    """Each acceptable answer set as sorted choice indices (a=0): choices are used by position, so
    a choice text containing "," never matters."""
    return tuple(tuple(sorted(LETTERS.index(a) for a in s)) for s in question.answer)


def letters_of(indices: Iterable[int]) -> tuple[str, ...]:
    return tuple(LETTERS[i] for i in sorted(indices))


def gold_text(question, answer_set: int = 0) -> str:
    """Gold choice texts of one answer set, in choice order, joined by "," and cleaned."""
    idx = gold_indices(question)[answer_set]
    return clean(",".join(question.choices[i] for i in idx))


def text_grade(question, response: str | None, extraction: str = "last-block") -> dict:
    """Exact match, gestalt score, gestalt pick and accuracy for one question (not numeric). A missing
    response (None) is wrong in every metric; an empty one is graded like any text, as the harness
    does (its gestalt pick then ties, and ties go to the first choice)."""
    if response is None:
        return {"exact": False, "gestalt": 0.0, "pick": (), "gestalt_correct": False}
    r = clean(extract_response(response, extraction))
    golds = [gold_text(question, i) for i in range(len(question.answer))]
    k = question.n_answers
    pick = topk_by_gestalt(r, question.choices, k)
    if question.accept_any:
        return {"exact": True, "gestalt": 1.0, "pick": pick, "gestalt_correct": True}
    return {
        "exact": any(r == g for g in golds),
        "gestalt": max(gestalt(r, g) for g in golds),  # one set unless alternatives ("a or d")
        "pick": pick,
        "gestalt_correct": pick in gold_indices(question),
    }


def _text_aggregate(rows: list[dict]) -> dict:
    n = len(rows)
    return {
        "questions": n,
        "exact_match": _frac(sum(r["exact"] for r in rows), n),
        "gestalt": _frac(sum(r["gestalt"] for r in rows), n),
        "gestalt_accuracy": _frac(sum(r["gestalt_correct"] for r in rows), n),
        "exact_correct": sum(r["exact"] for r in rows),
        "gestalt_correct": sum(r["gestalt_correct"] for r in rows),
        "missing": sum(r["missing"] for r in rows),
    }


def text_rows(questions: Iterable, responses: Mapping[str, str], extraction: str = "last-block") -> list[dict]:
    rows = []
    for q in questions:
        if q.numeric:
            continue
        resp = responses.get(q.id)
        g = text_grade(q, resp, extraction)
        rows.append({"id": q.id, "year": q.year, "category": q.category, "response": resp,
                     "gold": gold_text(q), "missing": resp is None,
                     **g, "pick": ",".join(letters_of(g["pick"]))})
    return rows


def text_summary(questions: Sequence, responses: Mapping[str, str], extraction: str = "last-block") -> dict:
    """Exact match, mean gestalt score and gestalt accuracy (fractions); numeric-entry questions are
    excluded and counted; a missing response is wrong in every metric."""
    rows = text_rows(questions, responses, extraction)
    out = {"protocol": "text", "extraction": extraction, **_text_aggregate(rows)}
    out["excluded_numeric"] = sum(1 for q in questions if q.numeric)
    out["missing_ids"] = [r["id"] for r in rows if r["missing"]]
    years = sorted({r["year"] for r in rows}, key=lambda y: (y is None, y or 0))
    out["by_year"] = {_year_key(y): _text_aggregate([r for r in rows if r["year"] == y]) for y in years}
    return out


# ---- log-likelihood protocol -------------------------------------------------------------------


def loglik_summary(questions: Sequence, scores: Mapping[str, Sequence[float]]) -> dict:
    """Letter summary of the top-k choices by log-likelihood, k = the gold answer count; plus
    `accuracy_stem_k`, with k read from 「Nつ選べ」. Numeric-entry questions are excluded."""
    qs = [q for q in questions if not q.numeric]
    preds = {q.id: ",".join(letters_of(loglik_pick(scores[q.id], q.n_answers))) for q in qs if q.id in scores}
    stem_preds = {q.id: ",".join(letters_of(loglik_pick(scores[q.id], n_select(q.stem))))
                  for q in qs if q.id in scores}
    out = letter_summary(qs, preds, PICKS)
    out["protocol"] = "loglik"
    out["excluded_numeric"] = len(questions) - len(qs)
    stem_correct = sum(is_correct(q, parse_answer(q, stem_preds.get(q.id), PICKS)) for q in qs)
    out["accuracy_stem_k"] = _frac(stem_correct, len(qs))
    return out
