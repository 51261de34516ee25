"""`jmed serve`'s model URI and `jmed predict`: questions from a file, answered by a registered version."""

from __future__ import annotations

import os
from pathlib import Path

from jmed.registry.decision import CHAMPION
from jmed.registry.store import champion, model_name


def champion_uri(base_model: str = "") -> str:
    """models:/jmed-<slug>@champion for the base model given, or the only registered jmed model."""
    from mlflow import MlflowClient

    from jmed.tracking import setup, slug

    setup()
    client = MlflowClient()
    if base_model:
        names = [model_name(slug(base_model))]
    else:
        names = sorted(
            m.name for m in client.search_registered_models("name LIKE 'jmed-%'") if CHAMPION in (m.aliases or {})
        )
        if len(names) != 1:
            raise ValueError(
                "no registered model has a champion yet; run `jmed promote`"
                if not names
                else f"several base models have a champion ({', '.join(names)}); choose one with --base-model"
            )
    if champion(client, names[0], "eval/accuracy") is None:
        raise ValueError(f"registered model {names[0]} has no '{CHAMPION}' alias; run `jmed promote` first")
    return f"models:/{names[0]}@{CHAMPION}"


def read_questions_file(path) -> tuple[list[str], list[dict]]:
    """(ids, records) from a JSONL file of {id?, question, choices, n_answers?} or any format jmed.data reads.
    Bad lines raise ValueError naming file:line:field."""
    from jmed.checks import load_valid
    from jmed.contract import check_inputs
    from jmed.data import jsonl_objects

    path = Path(path)
    objects, bad = jsonl_objects(path)
    if not (objects and "question" in objects[0][1]):  # not plain records: a dataset format jmed.data reads
        valid = load_valid(path, questions_only=True)  # `jmed validate`'s checks
        qs = [q for q in valid if q.choices and not q.no_prompt]
        if len(qs) < len(valid):  # a served model answers choices; say which questions it cannot
            import sys

            print(
                f"[jmed] predict: {len(valid) - len(qs)} question(s) left out (numeric entry, or no prompt can be "
                "made of them): " + ", ".join(q.id for q in valid if q not in qs)[:300],
                file=sys.stderr,
            )
        return [q.id for q in qs], [
            {"question": q.stem, "choices": list(q.choices), "n_answers": q.n_answers or 1} for q in qs
        ]
    from jmed.data import same_id
    from jmed.records import shown, type_name

    ids, records, errors = [], [], [str(e) for e in bad]
    first: dict[str, int] = {}  # id as compared (jmed.data.same_id) -> its line
    for no, rec in objects:
        key = "id" if "id" in rec else "problem_id"
        raw = rec.pop("id", rec.pop("problem_id", no))
        # an id is written as `score` reads it back: a string (an integer is written as one)
        if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
            what = "empty" if isinstance(raw, str) else type_name(raw)
            errors.append(f"{path}:{no}: {key}: must be a non-empty string or an integer, got {what}")
            continue
        rid = str(raw).strip()
        if same_id(rid) in first:  # two answers under one id: `score` would refuse the file
            errors.append(f"{path}:{no}: {key}: {shown(rid)} is the id of line {first[same_id(rid)]} too")
            continue
        first[same_id(rid)] = no
        try:
            check_inputs([rec])
        except Exception as e:  # MlflowException from the same checks the server applies
            errors.append(f"{path}:{no}: {getattr(e, 'message', str(e)).removeprefix('invalid input: record 0: ')}")
            continue
        ids.append(rid)
        records.append(rec)
    if errors:
        raise ValueError(f"{len(errors)} bad line(s):\n" + "\n".join(errors[:20]))
    if not records:
        raise ValueError(f"{path}: no questions")
    return ids, records


def served_fields(row: dict, asked: dict) -> dict:
    """A served model's answer in jmed.contract.OUTPUT_FIELDS. Versions registered by jmed 0.2 answer
    `answer`/`raw_output` and no count: the names are mapped and the count worked out as they would."""
    from jmed.contract import OLD_FIELD_ALIASES, OUTPUT_FIELDS, check_inputs
    from jmed.metrics import count_mismatch

    row = {**{new: row[old] for old, new in OLD_FIELD_ALIASES.items() if old in row}, **row}
    if "n_answers" not in row:
        row["n_answers"] = check_inputs([asked])[0]["n_answers"]
        row["count_mismatch"] = count_mismatch([a for a in str(row["prediction"]).split(",") if a], row["n_answers"])
    return {k: row[k] for k in OUTPUT_FIELDS}


def predict_file(
    model_uri: str, path, protocol: str = "", max_new_tokens: int = 0, batch_size: int = 8, engine: str = "hf"
):
    """Answer a file of questions offline with the served model; yields one result dict per question
    (`problem_id` and `prediction` as `jmed score --predictions` reads them)."""
    import mlflow
    import pandas as pd

    from jmed.tracking import setup

    ids, records = read_questions_file(path)
    setup()
    # the served model learns its URI (for `model_version`) from JMED_MODEL_URI; no alias polling here
    saved = {k: os.environ.get(k) for k in ("JMED_MODEL_URI", "JMED_SERVE_POLL_S", "JMED_ENGINE")}
    os.environ.update({"JMED_MODEL_URI": model_uri, "JMED_SERVE_POLL_S": "0", "JMED_ENGINE": engine})
    from jmed.console import sifted

    try:
        with sifted():
            model = mlflow.pyfunc.load_model(model_uri)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    params = {k: v for k, v in {"protocol": protocol, "max_new_tokens": max_new_tokens}.items() if v}
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            out = model.predict(pd.DataFrame(chunk), params=params or None)
            for rid, row, asked in zip(ids[start : start + batch_size], out.to_dict("records"), chunk):
                yield {"problem_id": rid, **served_fields(row, asked)}
    finally:
        engine_of = getattr(model.unwrap_python_model(), "vllm", None)
        if engine_of is not None:
            engine_of.close()  # the vLLM server predict started
