"""Prompt formats by name.

One rendering serves training, evaluation and serving: `render(question, fmt, shots)` returns the prompt
and the target the model should produce after it. The format name travels with the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from jmed import exams
from jmed.records import LETTERS, MAX_CHOICES

DEFAULT_KIND = "medical"  # serving renders raw fields with no exam named: the medical exam's wording


def preamble(n_choices: int = 5, exam_kind: str = DEFAULT_KIND) -> str:
    """The authors' harness instruction, with the question's own number of choices ("4つの選択肢" for
    JMMLU's 4) and its exam's field (薬学知識 for the pharmacist exam); for IgakuQA's 5 it is the
    harness's text exactly."""
    return (
        f"以下は{exams.get(exam_kind).knowledge}に関する多肢選択問題です。利用可能な情報を要約してから、段階的に解決してください。"
        f"最終的な答えとして{n_choices}つの選択肢のうちの1つを出力してください。"
    )


RESPONSE_HEADER = "### 応答：\n"

BASE_FORMATS = ("igakuqa", "alpaca_med", "medpalm")
# `chat` wraps a base format in the tokenizer's chat template; `chat` alone means `chat-igakuqa`.
FORMATS = BASE_FORMATS + tuple(f"chat-{f}" for f in BASE_FORMATS) + ("chat",)


@dataclass(frozen=True)
class Rendered:
    prompt: str
    target: str


def protocol_for(fmt: str) -> str:
    """The scoring protocol a format's answers are read with: letters, or choice text."""
    return "letter" if base_format(fmt) == "igakuqa" else "text"


def base_format(fmt: str) -> str:
    check_format(fmt)
    if fmt == "chat":
        return "igakuqa"
    return fmt.removeprefix("chat-")


def check_protocol(fmt: str, protocol: str) -> None:
    """A generation protocol must read the answers the prompt format asks for (loglik reads any)."""
    if protocol in ("letter", "text") and protocol != protocol_for(fmt):
        raise ValueError(
            f"protocol {protocol!r} cannot read answers of prompt format {fmt!r} (its answers are "
            f"{'letters' if protocol_for(fmt) == 'letter' else 'choice text'}); use protocol "
            f"{protocol_for(fmt)!r} or loglik"
        )


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def _kind(question) -> str:
    return getattr(question, "exam_kind", DEFAULT_KIND) or DEFAULT_KIND


def _n_select(question) -> int:
    return max(1, len(question.answer[0])) if question.answer else 1


def _igakuqa(stem: str, choices: Sequence[str], n: int, exam_kind: str) -> str:
    lines = [
        f"以下は{exams.get(exam_kind).title}の問題です。選択肢から答えを選び、記号で答えてください。"
        + (f"{n}つ選ぶ場合は記号をカンマで区切ってください（例：a,c）。" if n > 1 else ""),
        "",
        f"問題：{stem}",
    ]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices)]
    lines += ["", "答え："]
    return "\n".join(lines)


def target_letters(question) -> str:
    """Gold letters of the first acceptable answer set, sorted and joined by "," (e.g. "d,e")."""
    return ",".join(sorted(question.answer[0])) if question.answer else ""


def target_text(question) -> str:
    """Gold choice texts joined by "," in choice order (the 70B paper's harness)."""
    if not question.answer:
        return ""
    idx = sorted(LETTERS.index(a) for a in question.answer[0] if a in LETTERS[: len(question.choices)])
    return ",".join(question.choices[i] for i in idx)


def render_prompt(
    stem: str, choices: Sequence[str], fmt: str, n_answers: int = 1, exam_kind: str = DEFAULT_KIND
) -> str:
    """The prompt alone, from raw fields: what serving sees (no gold answer). More choices than letters
    is an error: a prompt never drops a choice."""
    if len(choices) > MAX_CHOICES:
        raise ValueError(f"{len(choices)} choices; prompts label at most {MAX_CHOICES} ({LETTERS[0]}-{LETTERS[-1]})")
    base = base_format(fmt)
    if base == "igakuqa":
        return _igakuqa(stem, choices, n_answers, exam_kind)
    joined = ",".join(choices)
    head = preamble(len(choices), exam_kind)
    if base == "alpaca_med":
        return f"{head}\n### 指示：\n{stem}\n### 入力：\n{joined}\n{RESPONSE_HEADER}"
    return f"### 指示：\n{head}\n### 入力：\n{stem}\n{joined}\n{RESPONSE_HEADER}"


def render_one(question, fmt: str) -> Rendered:
    base = base_format(fmt)
    prompt = render_prompt(question.stem, question.choices, base, _n_select(question), _kind(question))
    target = target_letters(question) if base == "igakuqa" else target_text(question)
    return Rendered(prompt, target)


def render(question, fmt: str, shots: Sequence = (), tokenizer=None) -> Rendered:
    """Prompt and target for `question`; each shot is a solved example placed before it.

    Chat formats need the tokenizer: the whole few-shot text becomes one user turn, and the
    template's assistant header ends the prompt.
    """
    main = render_one(question, fmt)
    if shots and base_format(fmt) in ("medpalm", "alpaca_med"):
        text = _harness_shots(question, shots, base_format(fmt))
    else:
        text = "\n\n".join([render_one(s, fmt).prompt + render_one(s, fmt).target for s in shots] + [main.prompt])
    if fmt.startswith("chat"):
        text = apply_chat(text, tokenizer)
    return Rendered(text, main.target)


def _harness_shots(question, shots: Sequence, base: str) -> str:
    """The authors' harness's few-shot layout (template.py, its 1-shot medpalm template): the instruction
    once, then each solved example as an input and its response, then the question. Examples list their
    choices joined by ", " and answer with the choice text, as that template does; alpaca_med, which has
    no few-shot template there, follows the same layout in its own sections."""

    def block(q, answer: str | None) -> str:
        sep = ", " if answer is not None else ","
        if base == "medpalm":
            text = f"### 入力：\n{q.stem}\n{sep.join(q.choices)}\n{RESPONSE_HEADER}"
        else:
            text = f"### 指示：\n{q.stem}\n### 入力：\n{sep.join(q.choices)}\n{RESPONSE_HEADER}"
        return text + (f"{answer}\n" if answer is not None else "")

    text = preamble(len(question.choices), _kind(question))
    head = f"### 指示：\n{text}\n" if base == "medpalm" else f"{text}\n"
    return head + "".join(block(s, target_text(s)) for s in shots) + block(question, None)


def apply_chat(text: str, tokenizer) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat prompt formats need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def render_record(record, fmt: str, tokenizer=None) -> Rendered:
    """An instruction record {instruction, input, output} in the format's layout."""
    base = base_format(fmt)
    if base == "medpalm":
        text = f"### 指示：\n{record.instruction}\n### 入力：\n{record.input}\n{RESPONSE_HEADER}"
    else:
        text = f"{record.instruction}\n### 入力：\n{record.input}\n{RESPONSE_HEADER}"
    if fmt.startswith("chat"):
        text = apply_chat(text, tokenizer)
    return Rendered(text, record.output)


# The authors' harness (github stardust-coder/japanese-lm-med-harness, eval_bench.py) changed how it
# reads the answer out of the generated text: `last-block` as first published (2024-06-18: the text after
# the last "### 応答：\\n"), `first-line` from 2024-07-26 (the first chunk after the prompt's header,
# stripped, its first line, stripped). jmed's default is last-block: the papers' figures predate the change.
EXTRACTIONS = ("last-block", "first-line")


def extract_response(text: str, extraction: str = "last-block") -> str:
    """Text protocol: the answer in a generated continuation (the prompt ends with the header, so the
    harness's chunk after the prompt's header is the continuation up to any header it generates)."""
    if extraction == "last-block":
        return text.rsplit(RESPONSE_HEADER, 1)[-1].strip()
    if extraction == "first-line":
        return text.split(RESPONSE_HEADER, 1)[0].strip().split("\n")[0].strip()
    raise ValueError(f"unknown extraction {extraction!r}; choose one of: {', '.join(EXTRACTIONS)}")
