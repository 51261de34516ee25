"""What a person reads of the data a result was measured on: a name, a count, the selection and the
digest, always together (`igakuqa 2022, 20 of 400 questions (limit 20), 7414a6aa1553`).

A digest (jmed.data.digest) covers exactly the records it is printed with: `jmed validate` digests
every record a file or folder holds; train the examples it trained on; evaluate the questions it
evaluated, after filters, --sample and --limit. So one folder has one validate digest and one digest
per selection evaluated from it. Pure: no MLflow, no files read.
"""

from __future__ import annotations

from pathlib import PurePath

# path parts that name no dataset (`../shared/datasets/igakuqa/data/2022` is "igakuqa 2022")
_GENERIC = {"", ".", "..", "data", "datasets", "dataset", "shared", "sample_data", "tmp"}

# the evaluation settings that select questions, as evaluate logs them (jmed.config.flat of EvalConfig)
_SELECTION = (
    ("filters.years", "years"),
    ("filters.blocks", "blocks"),
    ("filters.ids", "ids"),
    ("filters.exclude_ids", "excluding"),
    ("filters.text_only", "text only"),
    ("filters.five_choices", "five choices"),
    ("filters.scored_only", "scored only"),
    ("sample", "sample"),
    ("limit", "limit"),
)


def data_name(path: str) -> str:
    """A short name for a data path: its last two meaningful parts, without file suffixes."""
    parts = [PurePath(p).stem if "." in p.strip(".") else p for p in PurePath(str(path)).parts]
    named = [p for p in parts if p.lower() not in _GENERIC and p != "/"]
    return " ".join(named[-2:]) or str(path)


def selection(params: dict) -> list[str]:
    """The question selection of an evaluate run's params, as words ("limit 20", "years 2022")."""
    out = []
    for key, word in _SELECTION:
        value = str(params.get(key, "") or "").strip()
        if value in ("", "0", "False", "false", "None", "()"):
            continue
        out.append(word if value in ("True", "true") else f"{word} {value}")
    return out


def data_label(
    name: str, used: int, total: int | None, digest: str, chosen: list[str] = (), what: str = "questions"
) -> str:
    """`igakuqa 2022, 20 of 400 questions (limit 20), 7414a6aa1553`."""
    count = f"{used} of {total} {what}" if total and int(total) != int(used) else f"{used} {what}"
    return f"{name}, {count}" + (f" ({', '.join(chosen)})" if chosen else "") + f", {str(digest)[:12]}"


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def evaluation_data(params: dict) -> str:
    """The data label of an evaluate run (its params); runs from before `eval_data_total` show one count."""
    return data_label(
        data_name(params.get("eval_data_path", "") or params.get("eval_data", "") or "?"),
        _int(params.get("questions")) or 0,
        _int(params.get("eval_data_total")),
        params.get("eval_data_digest", ""),
        selection(params),
    )


def evaluation_label(params: dict) -> str:
    """Everything an evaluation is compared on: data, then protocol, prompt format, shots and engine."""
    return (
        f"{evaluation_data(params)}; {params.get('protocol', '?')}, {params.get('prompt_format', '?')}, "
        f"{params.get('shots', '0')}-shot, {params.get('engine', '') or 'hf'}"
    )
