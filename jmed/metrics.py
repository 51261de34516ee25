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

from jmed import exams, readers
from jmed.config import PARSINGS
from jmed.prompts import LETTERS, extract_response

OFFICIAL, LENIENT = PARSINGS
# jmed's own picks (log-likelihood and gestalt top-k, written "b,d") are read with IgakuQA's reference rules
# whatever the dataset: a dataset's own scorer (official parsing) is for predictions made elsewhere.
PICKS = "picks"

# Sections and pass rules belong to each exam (jmed/exams/<kind>.py); the medical exam's are re-exported
# here because they are what most callers mean.
from jmed.exams.medical import DEFAULT_GENERAL_LINE, GENERAL_LINES, general_line, pass_fail  # noqa: E402,F401

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
# An answer set off as such (after NFKC): 「【回答】a」 (JMLE2026-Bench's prompt asks for it), "[回答] a",
# "回答:a", "答え: e", with markdown emphasis around ("**【回答】** c"). Reasoning models discuss choices
# ("a. 誤り", "答えはaかもしれない") before the answer they settle on, so the last one that reads wins.
_MARKED = re.compile(
    r"(?:【\s*(?:回答|答え|解答|正解|答)\s*】|\[\s*(?:回答|答え|解答|正解|答)\s*\]"
    r"|(?:回答|答え|解答|正解|答|answer)\s*:)[\s*_]*",
    re.IGNORECASE,
)
# Reasoning (Qwen3, DeepSeek-R1): "<think>…</think>answer"; their chat templates may put the opening tag in
# the prompt, so the output can hold only the closing one.
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def normalize(text: str) -> str:
    """NFKC (full-width letters, digits, punctuation and spaces become ASCII) and strip."""
    return unicodedata.normalize("NFKC", text).strip()


def strip_reasoning(text: str | None) -> str | None:
    """The answer part of a reasoning model's output: everything after the last "</think>" (an opening tag
    or not: the chat template may have put it in the prompt); with "<think>" but no closing tag (cut off while
    reasoning), only what precedes "<think>". Text without the tags is returned unchanged; the whitespace
    that follows the removed reasoning is dropped (official parsing would otherwise never read "c")."""
    if text is None:
        return None
    end = text.rfind(_THINK_CLOSE)
    if end >= 0:
        return text[end + len(_THINK_CLOSE) :].lstrip()
    start = text.find(_THINK_OPEN)
    return text[:start] if start >= 0 else text


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
    A marked answer (「【回答】a」, "[回答] a", "回答：b,e", "答え: e") comes first: the last one that reads
    as letters of the question, even after a discussion of the choices; a hedge there → None. Without one:
    the letters at the start, else after the first 「答えは」/"Answer:" that reads.
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
    for m in reversed(list(_MARKED.finditer(s))):  # before the re-listing check: a marked answer is explicit
        if _HEDGE.match(s, m.end()):
            return None
        letters = _letters_at(s, m.end())
        if letters and all(ch in valid for ch in letters):
            return tuple(sorted(set(letters)))
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


def parse_answer(question, text: str | None, mode: str = LENIENT) -> tuple[str, ...] | None:
    """Letters (or the numeric string) a prediction gives for `question`; None = unparseable. Official
    parsing is the dataset's own scorer (its reader's `official`, jmed/readers/<name>.py), else IgakuQA's
    reference. Every mode reads the output with its
    reasoning ("<think>…</think>") removed: letters weighed while reasoning are not the answer."""
    text = strip_reasoning(text)
    own = readers.official(getattr(question, "source", "")) if mode == OFFICIAL else None
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


def count_mismatch(letters, n_answers: int) -> bool:
    """A parsed answer whose number of letters is not the question's 「Nつ選べ」 count (one letter for a
    「2つ選べ」 question, "a,a,a" read as "a"): flagged in predict and serving, counted in evaluate and score.
    No answer is not a mismatch (it is unparsed or missing)."""
    return bool(letters) and len(set(letters)) != int(n_answers or 1)


def _gold_str(question) -> str:
    return "|".join(",".join(s) for s in question.answer)


def letter_rows(questions: Iterable, predictions: Mapping[str, str], parsing: str = LENIENT) -> list[dict]:
    """One row per question: prediction, parsed answer, gold, correct, points, flags."""
    rows = []
    for q in questions:
        pred = predictions.get(q.id)
        parsed = parse_answer(q, pred, parsing)
        correct = pred is not None and is_correct(q, parsed)  # missing is wrong, even where any answer counts
        rows.append(
            {
                "id": q.id,
                "year": q.year,
                "block": q.block,
                "category": q.category,
                "points": q.points,
                "prediction": pred,
                "parsed": None if parsed is None else ",".join(parsed),
                "gold": "*" if q.accept_any else _gold_str(q),
                "correct": correct,
                "points_scored": q.points if correct else 0,
                "missing": pred is None,
                "unparsed": pred is not None and parsed is None,
                "count_mismatch": bool(q.choices) and not q.accept_any and count_mismatch(parsed, q.n_answers),
                "kinki": kinki_selected(q, parsed),
                "kinki_known": getattr(q, "kinki_known", False),
                "exam_kind": getattr(q, "exam_kind", "medical"),
                "required": _required(q),
            }
        )
    return rows


def _required(q) -> bool:
    """Whether `q` is in its exam's required (必修) section, scored apart by the pass rule."""
    kind = exams.kinds().get(getattr(q, "exam_kind", "medical"))
    return kind is not None and kind.is_required(q)


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
    req = [r for r in rows if r["required"]]
    gen = [r for r in rows if not r["required"]]
    req_points = sum(r["points_scored"] for r in req)
    req_total = sum(r["points"] for r in req)
    gen_points = sum(r["points_scored"] for r in gen)
    gen_total = sum(r["points"] for r in gen)
    kinki = sum(r["kinki"] for r in rows)
    out = {
        "questions": n,
        "correct": correct,
        "accuracy": _frac(correct, n),
        "points": _num(points),
        "points_total": _num(total),
        "score": _frac(points, total),
        "required_points": _num(req_points),
        "required_total": _num(req_total),
        "required_score": _frac(req_points, req_total),
        "general_points": _num(gen_points),
        "general_total": _num(gen_total),
        "general_score": _frac(gen_points, gen_total),
        "unparsed": sum(r["unparsed"] for r in rows),
        "count_mismatch": sum(r["count_mismatch"] for r in rows),
        "missing": sum(r["missing"] for r in rows),
        "kinki_selected": kinki,
    }
    kinds = sorted({r.get("exam_kind", "medical") for r in rows})
    rule = exams.get(kinds[0]).pass_rule if len(kinds) == 1 and kinds[0] in exams.kinds() else None
    if with_pass and rule is None:  # another exam's rule is never applied: no verdict, and why
        out.update(
            passed=None,
            verdict=f"no pass rule for this exam ({'/'.join(kinds)}): jmed knows the rules "
            "of " + ", ".join(k for k, e in exams.kinds().items() if e.pass_rule),
        )
    elif with_pass:
        out.update(
            rule(
                req_points,
                req_total,
                gen_points,
                gen_total,
                kinki,
                year,
                kinki_known=all(r.get("kinki_known", False) for r in rows),
            )
        )
    return out


def _year_key(year) -> str:
    return str(year) if year is not None else "unknown"


def letter_summary(questions: Sequence, predictions: Mapping[str, str], parsing: str = LENIENT) -> dict:
    """Accuracy, exam score, required-section score, unparsed, missing, kinki; per year (with pass/
    fail) and per category. accuracy = correct / questions; score = Σ points of correct / Σ points."""
    rows = letter_rows(questions, predictions, parsing)
    out = {"protocol": "letter", "parsing": parsing, **_aggregate(rows)}
    out["missing_ids"] = [r["id"] for r in rows if r["missing"]]
    years = sorted({r["year"] for r in rows}, key=lambda y: (y is None, y or 0))
    out["by_year"] = {_year_key(y): _aggregate([r for r in rows if r["year"] == y], y, with_pass=True) for y in years}
    cats = sorted({r["category"] for r in rows})
    out["by_category"] = {
        (c or "unknown"): {
            k: v
            for k, v in _aggregate([r for r in rows if r["category"] == c]).items()
            if k in ("questions", "correct", "accuracy", "points", "points_total", "score")
        }
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
    does (its gestalt pick then ties, and ties go to the first choice). Reasoning ("<think>…</think>") is
    removed first, as in parse_answer."""
    if response is None:
        return {"exact": False, "gestalt": 0.0, "pick": (), "gestalt_correct": False}
    r = clean(extract_response(strip_reasoning(response), extraction))
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
        rows.append(
            {
                "id": q.id,
                "year": q.year,
                "category": q.category,
                "response": resp,
                "gold": gold_text(q),
                "missing": resp is None,
                **g,
                "pick": ",".join(letters_of(g["pick"])),
            }
        )
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
    stem_preds = {q.id: ",".join(letters_of(loglik_pick(scores[q.id], n_select(q.stem)))) for q in qs if q.id in scores}
    out = letter_summary(qs, preds, PICKS)
    out["protocol"] = "loglik"
    out["excluded_numeric"] = len(questions) - len(qs)
    stem_correct = sum(is_correct(q, parse_answer(q, stem_preds.get(q.id), PICKS)) for q in qs)
    out["accuracy_stem_k"] = _frac(stem_correct, len(qs))
    return out
