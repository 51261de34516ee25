"""Evaluate a base model or an adapter on exam questions (scored by jmed.metrics) and log one MLflow run.

    evaluate(EvalConfig) -> run id          jmed evaluate / mlflow run . -e evaluate

Inference runs on the batched engines of `jmed.inference` (greedy generation; log-likelihood with the
prompt encoded once), tokenising exactly as training does.

Protocols: letter (generate, parse letters), text (generate choice text: exact match, gestalt, gestalt
top-k), loglik (top-k choices, k = gold answer count; also k from 「Nつ選べ」). An adapter's run also
records its delta against the base model on the same data and settings: a matching FINISHED base run
in the store is reused, else the base (adapter disabled) is evaluated now as a child run.
`eval/questions_per_s` counts inference only (rendering, tokenising, forward passes), not loading.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from jmed import adapter
from jmed.config import PROTOCOLS
from jmed.identity import evaluation_data
from jmed.inference import answer_budget, encode_prompt, prompt_token_limit, shots_for
from jmed.prompts import check_protocol

# ---- adapters: jmed.adapter owns the card and the references ----------------------------------------

# ---- one pass over the questions ------------------------------------------------------------------


def run_questions(
    model,
    tokenizer,
    questions,
    protocol: str,
    prompt_format: str,
    shots: int = 0,
    parsing: str = "lenient",
    batch_size: int = 8,
    max_new_tokens: int = 0,
    desc: str = "",
    extraction: str = "last-block",
) -> dict:
    """Predict and score `questions`; returns {"rows": per-question dicts, "metrics": {...}, "summary": ...}.

    Numeric-entry questions are skipped (and counted) in the text and loglik protocols, which need choices.
    `shots` solved examples precede each question, chosen as training chooses them (`jmed.inference.shots_for`:
    the next questions of the same data, cyclically; never the question itself).
    `max_new_tokens` 0 fits each question's longest possible answer (`jmed.inference.answer_budget`);
    outputs cut off by their limit before EOS are counted as `eval/truncated`.
    """
    from jmed import metrics as M
    from jmed.engine import HFEngine
    from jmed.prompts import LETTERS, render

    engine = model if hasattr(model, "loglik") else HFEngine(model, tokenizer, batch_size)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    qs = list(questions) if protocol == "letter" else [q for q in questions if not q.numeric]
    skipped = len(questions) - len(qs)
    if not qs:
        raise ValueError(
            f"no questions left to evaluate: all {skipped} are numeric-entry, and the {protocol} "
            "protocol needs choices (use --protocol letter)"
        )
    prompts = [render(q, prompt_format, shots_for(qs, i, shots), tokenizer).prompt for i, q in enumerate(qs)]
    n_tokens = [len(encode_prompt(tokenizer, p)) for p in prompts]
    limit = prompt_token_limit(model, tokenizer)
    over = [(q.id, n) for q, n in zip(qs, n_tokens) if n > limit]
    if over:  # before any inference: the model's context (or jmed's limit) would be exceeded
        raise ValueError(
            f"{len(over)} prompt(s) over {limit} tokens, the longest this model takes: "
            + ", ".join(f"{qid} ({n} tokens)" for qid, n in over[:5])
            + (", …" if len(over) > 5 else "")
            + (f"; with {shots} shots each prompt carries {shots} solved examples: try fewer" if shots else "")
        )
    started = time.perf_counter()
    extra: dict = {}
    if protocol == "loglik":
        # Letter formats score the letters a, b, …; text formats score the choice texts themselves.
        conts = [list(LETTERS[: len(q.choices)]) if _is_letter_format(prompt_format) else list(q.choices) for q in qs]
        scores = engine.loglik(prompts, conts, desc=desc or "loglik")
        seconds = time.perf_counter() - started
        by_id = {q.id: sc for q, sc in zip(qs, scores)}
        summary = M.loglik_summary(qs, by_id)
        extra["accuracy_k_from_stem"] = summary["accuracy_stem_k"]
        outputs = [" ".join(f"{LETTERS[i]}:{v:.3f}" for i, v in enumerate(sc)) for sc in scores]
        preds = {q.id: ",".join(M.letters_of(M.loglik_pick(by_id[q.id], q.n_answers))) for q in qs}
        rows = M.letter_rows(qs, preds, M.PICKS)
    else:
        limits = [max_new_tokens or answer_budget(tokenizer, q.choices, q.n_answers, protocol) for q in qs]
        outputs, cut = engine.generate(prompts, limits, desc=desc or protocol)
        seconds = time.perf_counter() - started
        extra.update(truncated=sum(cut), max_new_tokens=max(limits, default=0))
        if protocol == "letter":
            preds = {q.id: out for q, out in zip(qs, outputs)}
            summary = M.letter_summary(qs, preds, parsing)
            rows = M.letter_rows(qs, preds, parsing)
        else:
            responses = {q.id: out for q, out in zip(qs, outputs)}
            text = M.text_summary(qs, responses, extraction)
            picks = {r["id"]: r["pick"] for r in M.text_rows(qs, responses, extraction)}
            summary = M.letter_summary(qs, picks, M.PICKS)  # accuracy, score, … of the gestalt picks
            rows = M.letter_rows(qs, picks, M.PICKS)
            extra.update(
                exact_match=text["exact_match"], gestalt=text["gestalt"], gestalt_accuracy=text["gestalt_accuracy"]
            )
            for year, ys in text["by_year"].items():
                for key in ("exact_match", "gestalt", "gestalt_accuracy"):
                    extra[f"{year}/{key}"] = ys[key]
    # What a reader compares first (id, parsed, gold, correct) leads; the long prompt comes last.
    table = [
        {
            "id": r["id"],
            "parsed": r["parsed"] or "",
            "gold": r["gold"],
            "correct": bool(r["correct"]),
            "points": float(r["points_scored"]),
            "max_points": float(r["points"]),
            "year": r["year"] or 0,
            "category": r["category"],
            "output": out,
            "prompt": p,
        }
        for r, p, out in zip(rows, prompts, outputs)
    ]
    lengths = sorted(n_tokens)
    if lengths:
        extra.update(prompt_tokens_median=lengths[len(lengths) // 2], prompt_tokens_max=lengths[-1])
    metrics = _metrics(summary, extra, len(qs), skipped, seconds)
    return {"rows": table, "metrics": metrics, "summary": summary, "seconds": seconds, "skipped": skipped}


def _is_letter_format(fmt: str) -> bool:
    from jmed.prompts import protocol_for

    return protocol_for(fmt) == "letter"


def _metric_key(name: str) -> str:
    import re

    return re.sub(r"[^\w\-. :/]", "_", str(name)).strip() or "_"


CATEGORY_CHARS = 100  # a category name longer than this is cut, with 8 hex digits of its sha256


def category_segment(name: str) -> str:
    """A category as one segment of a metric name (eval/category/<segment>/accuracy), the same for the
    same name everywhere: characters MLflow refuses, "/" and ":" become "_", a segment of dots becomes
    "_", and a name over CATEGORY_CHARS characters is cut and tagged with its digest (MLflow's limit is 250
    characters for the whole name)."""
    import hashlib
    import re

    seg = re.sub(r"[^\w\-. ]", "_", str(name)).strip() or "_"
    if set(seg) <= {"."}:
        seg = "_"
    if len(seg) > CATEGORY_CHARS:
        seg = f"{seg[: CATEGORY_CHARS - 9]}_{hashlib.sha256(str(name).encode()).hexdigest()[:8]}"
    return seg


def _metrics(summary: dict, extra: dict, n: int, skipped: int, seconds: float) -> dict:
    m = {
        "eval/questions": n,
        "eval/skipped_numeric": skipped,
        "eval/questions_per_s": n / seconds if seconds > 0 else 0.0,
    }
    for key in (
        "accuracy",
        "correct",
        "score",
        "points",
        "points_total",
        "required_score",
        "unparsed",
        "count_mismatch",
        "kinki_selected",
    ):
        if key in summary and summary[key] is not None:
            m[f"eval/{key}"] = float(summary[key])
    for key, value in extra.items():
        m[_metric_key(f"eval/{key}")] = float(value)
    for year, ys in sorted((summary.get("by_year") or {}).items()):
        for key in ("accuracy", "score", "required_score", "passed"):
            if ys.get(key) is not None:
                m[_metric_key(f"eval/{year}/{key}")] = float(ys[key])
    for cat, cs in sorted((summary.get("by_category") or {}).items()):
        if cs.get("accuracy") is not None:
            m[f"eval/category/{category_segment(cat)}/accuracy"] = float(cs["accuracy"])
    return m


# ---- the evaluate step ----------------------------------------------------------------------------

MATCH_PARAMS = (
    "model",
    "base_revision",
    "eval_data_digest",
    "protocol",
    "prompt_format",
    "shots",
    "parsing",
    "extraction",
    "limit",
    "sample",
    "quantization",
    "engine",
)


def _resolve(cfg, meta: dict):
    """Fill the unset (None) settings: the adapter's own, else tiny / the format's protocol / igakuqa /
    0 shots / no quantization. The config checked its own values when built; what is left to check
    is how they combine with the adapter."""
    import dataclasses

    from jmed.prompts import protocol_for

    model = cfg.model or meta.get("model") or "tiny"
    if meta.get("model") and model != meta["model"]:
        raise ValueError(
            f"adapter {cfg.adapter} was trained on {meta['model']!r}, not on model {model!r}; "
            f"pass --model {meta['model']} (or leave --model empty)"
        )
    fmt = adapter.prompt_format(meta, cfg.prompt_format)
    protocol = cfg.protocol or protocol_for(fmt)
    check_protocol(fmt, protocol)
    shots = cfg.shots if cfg.shots is not None else int(meta.get("shots", 0) or 0)
    quantization = cfg.quantization or str((meta.get("config") or {}).get("quantization", "") or "none")
    if cfg.engine == "vllm":
        quantization = "none"  # vLLM runs the base unquantised, a QLoRA adapter merged into it (config refuses 4bit)
        if cfg.engine_url and cfg.adapter:
            raise ValueError(
                f"--engine-url {cfg.engine_url}: the server's model is evaluated as it is served, so "
                f"--adapter {cfg.adapter} cannot be applied; serve the adapter there (jmed serve "
                "--engine vllm) and evaluate without --adapter, or drop --engine-url"
            )
    return dataclasses.replace(
        cfg, model=model, prompt_format=fmt, protocol=protocol, shots=shots, quantization=quantization
    )


def load_eval_questions(cfg, left_out: dict | None = None):
    """(data path, questions) after `jmed validate`'s checks, the filters, --sample and --limit.
    `left_out` (a dict) receives {reason: questions} for every question not evaluated."""
    from jmed.checks import load_valid
    from jmed.data import SAMPLE_TEST, apply_filters, left_out_counts, sample_questions

    path = cfg.eval_data or str(SAMPLE_TEST)
    valid = load_valid(
        path,
        cfg.data_format,
        questions_only=True,  # `jmed validate`'s checks, before the model
        exclude_ids=cfg.filters.exclude_ids,
    )
    if cfg.exam_kind:
        from jmed.data import with_exam_kind

        valid = with_exam_kind(valid, cfg.exam_kind)
    from jmed.data import check_ids, promptable

    check_ids(valid, cfg.filters, path)
    valid, unprompted = promptable(valid)  # a prompt is needed here: table choices, a blank stem are left out
    kept = apply_filters(valid, cfg.filters)
    if cfg.sample and cfg.sample >= len(kept):  # it would change nothing, yet be logged as a sample
        raise ValueError(
            f"--sample {cfg.sample}: {len(kept)} question(s) are left to sample from in {path}; "
            "leave --sample out to evaluate all of them"
        )
    questions = sample_questions(kept, cfg.sample, cfg.seed)
    reasons = {**unprompted, **left_out_counts(valid, cfg.filters)}
    if len(questions) < len(kept):
        reasons[f"not in --sample {cfg.sample}"] = len(kept) - len(questions)
    if cfg.limit and len(questions) > cfg.limit:
        reasons[f"beyond --limit {cfg.limit}"] = len(questions) - cfg.limit
        questions = questions[: cfg.limit]
    if left_out is not None:
        left_out.update(reasons)
    if cfg.shots and cfg.shots >= len(questions):  # shots are the other questions evaluated (shots_for)
        raise ValueError(
            f"--shots {cfg.shots} needs {cfg.shots} other questions as examples; {len(questions)} "
            "question(s) are evaluated: lower --shots or evaluate more questions"
        )
    if not questions:
        raise ValueError(
            f"no questions to evaluate in {path} after filters"
            + (f" ({', '.join(f'{why}: {n}' for why, n in reasons.items())})" if reasons else "")
        )
    return path, questions


def evaluate(cfg) -> str:
    """Evaluate `cfg.model` (+ `cfg.adapter`) on the eval data; log one run (jmed.tracking's conventions); return its id."""
    import mlflow
    import torch

    from jmed import data as D
    from jmed import tracking

    with tracking.step_run("evaluate", run_name=None) as run, contextlib.ExitStack() as stack:
        adapter_dir = adapter.resolve(cfg.adapter) if cfg.adapter else None
        meta = adapter.read(adapter_dir) if adapter_dir else {}
        cfg = _resolve(cfg, meta)
        left_out: dict = {}
        path, questions = load_eval_questions(cfg, left_out)
        digest = D.digest(questions)
        torch.manual_seed(cfg.seed)
        opened, model, tokenizer, info = open_engine(cfg, adapter_dir)
        stack.callback(opened.close)
        if meta.get("base_revision") and meta["base_revision"] != info.get("revision"):
            import warnings

            warnings.warn(
                f"adapter {cfg.adapter} was trained on {cfg.model} revision {meta['base_revision']}, "
                f"evaluating on revision {info.get('revision')} (both are logged)",
                stacklevel=2,
            )
        train_run = meta.get("train_run_id", "") if adapter_dir else ""
        tags = {
            tracking.BASE_TAG: info["slug"],
            tracking.ADAPTER_RUN_TAG: train_run or ("unknown" if adapter_dir else "none"),
        }
        mlflow.set_tags(tags)
        mlflow.set_tag("mlflow.runName", f"evaluate-{info['slug']}-{(train_run or 'base')[:8]}-{cfg.protocol}")
        params = {
            **_flat(cfg),
            "eval_data_path": path,
            "eval_data_digest": digest,
            "base_revision": info.get("revision", ""),
            "tokenizer_hash": info.get("tokenizer_hash", ""),
            "precision_resolved": info.get("precision_resolved", ""),  # vllm: the dtype it was started with
            "adapter_train_run": train_run,
            "adapter_train_data_digest": meta.get("train_data_digest", ""),
            "adapter_base_revision": meta.get("base_revision", ""),
            "questions": len(questions),
            "eval_data_total": len(questions) + sum(left_out.values()),  # before filters, --sample, --limit
        }
        tracking.log_params(params)
        tracking.log_dataset(questions, name=_data_name(path), path=path, digest=digest, context="eval")
        result = run_questions(
            opened.engine,
            tokenizer,
            questions,
            cfg.protocol,
            cfg.prompt_format,
            cfg.shots,
            cfg.parsing,
            cfg.batch_size,
            cfg.max_new_tokens,
            desc=f"evaluate {cfg.protocol}",
            extraction=cfg.extraction,
        )
        result["metrics"]["eval/load_s"] = opened.load_s
        if cfg.engine == "vllm":
            opened.close()  # before a base comparison starts an engine of its own: one engine's memory at a time
        base_metrics = None
        if adapter_dir and cfg.compare_base:
            base_run, base_metrics = _base_comparison(cfg, params, info, model, tokenizer, questions)
            params["base_eval_run"] = base_run
            tracking.log_params({"base_eval_run": base_run})
        in_data = len(questions) + sum(left_out.values())  # what the data held before any was left out
        if result["skipped"]:
            left_out["numeric-entry (the text and loglik protocols need choices)"] = result["skipped"]
        result["left_out"] = left_out
        _log_result(result, cfg, params, base_metrics)
        from jmed.console import say

        say(summary(info["slug"], cfg, result, base_metrics, run.info.run_id, in_data, evaluation_data(params)))
        mlflow.set_tag("mlflow.note.content", description(info["slug"], cfg, result, params, base_metrics))
        return run.info.run_id


def open_engine(cfg, adapter_dir):
    """(jmed.engine.Opened, the HF model or None, tokenizer, info) for the evaluation's engine. The hf
    engine loads the base (+ adapter) here; the vllm engine reads only the tokenizer here and runs the
    base, or its merged copy with the adapter, in a vLLM server (started now unless --engine-url)."""
    import tempfile

    from jmed import engine as E
    from jmed import models

    t0 = time.perf_counter()
    if cfg.engine == "hf":
        base, tokenizer, info = models.load_base(cfg.model, cfg.quantization, cfg.precision)
        model = (models.load_adapter(base, adapter_dir) if adapter_dir else base).eval()
        return E.Opened(E.HFEngine(model, tokenizer, cfg.batch_size), time.perf_counter() - t0), model, tokenizer, info
    tokenizer, info = models.load_tokenizer(cfg.model)
    model_dir = E.merged_dir(info["path"], info["revision"], adapter_dir) if adapter_dir else info["path"]
    log = Path(tempfile.gettempdir()) / f"jmed-vllm-{os.getpid()}.log"
    opened = E.open_vllm(model_dir, tokenizer, url=cfg.engine_url, log_path=log)
    opened.load_s = time.perf_counter() - t0
    # the dtype jmed started vLLM with (on a GPU vLLM's own: "auto"); a server at --engine-url runs
    # whatever it was started with
    dtype = E.vllm_dtype()
    started = "auto" if dtype == "auto" else models.precision_name(dtype)
    info = {**info, "precision_resolved": "" if cfg.engine_url else started}
    return opened, None, tokenizer, info


def verdict(summary: dict) -> str:
    """The exam's pass verdict per year in the data, or why there is none (jmed.metrics.pass_fail)."""
    years = {y: ys.get("verdict") for y, ys in (summary.get("by_year") or {}).items() if ys.get("verdict")}
    return ", ".join(f"{y} {v}" for y, v in sorted(years.items())) or "none"


def summary(slug: str, cfg, result: dict, base: dict | None, run_id: str, in_data: int, data: str = "") -> str:
    """What the terminal shows after an evaluation: the headline figures, what may have capped them,
    and every question left out with its reason."""
    from jmed.console import block, pct, signed_pct

    m, left_out = result["metrics"], result.get("left_out", {})
    n = int(m.get("eval/questions", 0))

    def vs_base(key):
        if not base or key not in base or key not in m:
            return ""
        return f" (base {pct(base[key])}, {signed_pct(m[key] - base[key])})"

    rows = [
        ("data", data or None),
        (
            "questions",
            f"{n} evaluated of {in_data} in the data"
            + "".join(f"; {k} left out: {why}" for why, k in left_out.items()),
        ),
        ("accuracy", pct(m.get("eval/accuracy")) + vs_base("eval/accuracy")),
        (
            "exam score",
            f"{pct(m.get('eval/score'))} ({m.get('eval/points', 0):g} of {m.get('eval/points_total', 0):g} "
            f"points)" + vs_base("eval/score")
            if "eval/score" in m
            else None,
        ),
        ("required", pct(m["eval/required_score"]) if "eval/required_score" in m else None),
        ("pass", verdict(result.get("summary", {}))),
        (
            "exact match",
            f"{pct(m['eval/exact_match'])}, gestalt accuracy {pct(m['eval/gestalt_accuracy'])}"
            if "eval/exact_match" in m
            else None,
        ),
        ("unparsed", f"{int(m.get('eval/unparsed', 0))} of {n}" if cfg.protocol == "letter" else None),
        (
            "wrong count",
            f"{int(m['eval/count_mismatch'])} answers with another number of letters than the question asks for"
            if m.get("eval/count_mismatch")
            else None,
        ),
        (
            "cut off",
            f"{int(m['eval/truncated'])} answers reached max_new_tokens (up to {int(m['eval/max_new_tokens'])})"
            if m.get("eval/truncated")
            else None,
        ),
        ("run", run_id),
    ]
    what = f"adapter of train run {_train_run_of(cfg)}" if cfg.adapter else "base model"
    return block(f"evaluate {slug} {what}: {cfg.prompt_format}/{cfg.protocol}, {cfg.shots}-shot", rows)


def _train_run_of(cfg) -> str:
    return str(cfg.adapter).removeprefix("runs:/").split("/")[0][:12]


def description(slug: str, cfg, result: dict, params: dict, base: dict | None) -> str:
    """The run's description in the MLflow UI (markdown): what ran, on what data, and the result."""
    from jmed.console import pct, signed_pct

    m = result["metrics"]
    what = f"adapter `{cfg.adapter}`" if cfg.adapter else "the base model"
    delta = (
        f" ({signed_pct(m['eval/accuracy'] - base['eval/accuracy'])} vs the base model, run "
        f"`{params.get('base_eval_run', '')}`)"
        if base and "eval/accuracy" in base
        else ""
    )
    return (
        f"Evaluated {what} of `{cfg.model}` on `{params['eval_data_path']}` ({params['questions']} questions, "
        f"data digest `{params['eval_data_digest'][:12]}`), prompt format `{cfg.prompt_format}`, protocol "
        f"`{cfg.protocol}`, {cfg.shots}-shot.\n\nAccuracy {pct(m.get('eval/accuracy'))}{delta}; exam score "
        f"{pct(m.get('eval/score'))}; pass: {verdict(result.get('summary', {}))}. Details: `summary.md`, `predictions.json`."
    )


def _flat(cfg) -> dict:
    from jmed.config import flat

    return flat(cfg)


def _data_name(path: str) -> str:
    from pathlib import Path

    p = Path(path)
    return p.stem if p.is_file() else p.name


DELTA_KEYS = (
    "accuracy",
    "score",
    "required_score",
    "exact_match",
    "gestalt",
    "gestalt_accuracy",
    "unparsed",
    "accuracy_k_from_stem",
)


def find_base_run(params: dict, generative: bool):
    """A FINISHED base-model evaluate run in this tracking store with the same model, revision, data and
    settings; None when there is none."""
    from mlflow.tracking import MlflowClient

    keys = MATCH_PARAMS + (("max_new_tokens", "precision") if generative else ("precision",))
    clauses = ["tags.`jmed.step` = 'evaluate'", "tags.`jmed.adapter_run` = 'none'", "attributes.status = 'FINISHED'"]
    for key in keys:
        value = str(params.get(key, ""))
        if "'" in value:
            return None
        clauses.append(f"params.`{key}` = '{value}'")
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def _base_comparison(cfg, params, info, model, tokenizer, questions):
    """(base run id, base metrics): a matching earlier base run, or the base evaluated now (adapter disabled)
    and logged as a child run so that later evaluations reuse it."""
    import contextlib
    import dataclasses

    from jmed import tracking

    found = find_base_run(params, cfg.protocol != "loglik")
    if found is not None:
        return found.info.run_id, dict(found.data.metrics)
    base_cfg = dataclasses.replace(cfg, adapter=None, compare_base=False)
    base_params = {
        **params,
        **_flat(base_cfg),
        "adapter_train_run": "",
        "adapter_train_data_digest": "",
        "adapter_base_revision": "",
    }
    tags = {tracking.BASE_TAG: info["slug"], tracking.ADAPTER_RUN_TAG: "none"}
    name = f"evaluate-{info['slug']}-base-{cfg.protocol}"
    with tracking.step_run("evaluate", run_name=name, nested=True, tags=tags) as child:
        tracking.log_params(base_params)
        tracking.log_dataset(
            questions,
            name=_data_name(params["eval_data_path"]),
            path=params["eval_data_path"],
            digest=params["eval_data_digest"],
            context="eval",
        )
        with contextlib.ExitStack() as stack:
            if model is None:  # the vllm engine: the base is a model of its own
                opened = stack.enter_context(open_engine(base_cfg, None)[0])
                engine, load_s = opened.engine, opened.load_s
            else:
                if hasattr(model, "disable_adapter"):
                    stack.enter_context(model.disable_adapter())
                engine, load_s = model, 0.0
            result = run_questions(
                engine,
                tokenizer,
                questions,
                cfg.protocol,
                cfg.prompt_format,
                cfg.shots,
                cfg.parsing,
                cfg.batch_size,
                cfg.max_new_tokens,
                desc=f"base {cfg.protocol}",
                extraction=cfg.extraction,
            )
            result["metrics"]["eval/load_s"] = load_s
        _log_result(result, base_cfg, base_params, None)
        return child.info.run_id, result["metrics"]


def _log_result(result: dict, cfg, params: dict, base_metrics: dict | None) -> None:
    import mlflow
    import pandas as pd

    metrics = dict(result["metrics"])
    if base_metrics:
        for key in DELTA_KEYS:
            if f"eval/{key}" in metrics and f"eval/{key}" in base_metrics:
                metrics[f"eval/delta/{key}"] = metrics[f"eval/{key}"] - base_metrics[f"eval/{key}"]
        for key, value in result["metrics"].items():
            parts = key.split("/")
            if len(parts) == 3 and parts[1].isdigit() and parts[2] == "accuracy" and key in base_metrics:
                metrics[f"eval/delta/{parts[1]}/accuracy"] = value - base_metrics[key]
    metrics["eval/left_out"] = float(sum(result.get("left_out", {}).values()))
    mlflow.log_metrics(metrics)
    mlflow.log_table(pd.DataFrame(result["rows"]), artifact_file="predictions.json")
    fig = plot_categories(result["rows"])
    mlflow.log_figure(fig, "accuracy_by_category.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    mlflow.log_text(summary_markdown(result, cfg, params, metrics), "summary.md")


def category_accuracy(rows: list[dict]) -> list[tuple[str, int, float]]:
    """(category, questions, accuracy) per category, most questions first; "(none)" for uncategorised."""
    groups: dict[str, list[bool]] = {}
    for r in rows:
        groups.setdefault(r["category"] or "(none)", []).append(r["correct"])
    return sorted(((c, len(v), sum(v) / len(v)) for c, v in groups.items()), key=lambda t: (-t[1], t[0]))


def _cjk_font():
    """IPAex Gothic from the matplotlib-fontja package (a pinned dependency), so category names render
    on any machine, whatever fonts it has."""
    from matplotlib import font_manager
    from matplotlib_fontja import get_font_ttf_path

    path = get_font_ttf_path()
    font_manager.fontManager.addfont(path)
    return font_manager.FontProperties(fname=path)


def plot_categories(rows: list[dict]):
    """Horizontal bars of accuracy per category, labelled with the (Japanese) category names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = category_accuracy(rows)
    font = _cjk_font()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(cats) + 1.2))
    ax.barh(range(len(cats)), [a for _, _, a in cats], color="#4C72B0")
    ax.set_yticks(range(len(cats)), [f"{c} (n={n})" for c, n, _ in cats], fontproperties=font)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title("Accuracy per category")
    fig.tight_layout()
    return fig


def summary_markdown(result: dict, cfg, params: dict, metrics: dict) -> str:
    adapter = cfg.adapter or "none (base model)"
    lines = [
        f"# Evaluation: {cfg.model} + adapter {adapter}",
        "",
        f"- data: `{params['eval_data_path']}` ({params['questions']} questions, digest "
        f"`{params['eval_data_digest'][:12]}`), skipped numeric-entry: {int(metrics['eval/skipped_numeric'])}",
        f"- protocol `{cfg.protocol}`, prompt format `{cfg.prompt_format}`, {cfg.shots}-shot, parsing "
        f"`{cfg.parsing}`, {metrics['eval/questions_per_s']:.1f} questions/s",
        "",
    ]
    if params.get("base_eval_run"):
        lines.insert(4, f"- compared with base run `{params['base_eval_run']}`")
    for why, n in result.get("left_out", {}).items():
        lines.insert(-1, f"- left out: {n} ({why})")
    lines += ["| metric | value | delta vs base |", "|---|---|---|"]
    for key in DELTA_KEYS:
        if f"eval/{key}" in metrics:
            delta = metrics.get(f"eval/delta/{key}")
            lines.append(f"| {key} | {metrics[f'eval/{key}']:.4f} | {'' if delta is None else f'{delta:+.4f}'} |")
    years = sorted({k.split("/")[1] for k in metrics if k.count("/") == 2 and k.split("/")[1].isdigit()})
    if years:
        lines += ["", "| year | accuracy | score | required score | passed |", "|---|---|---|---|---|"]
        for y in years:
            cells = [metrics.get(f"eval/{y}/{k}") for k in ("accuracy", "score", "required_score", "passed")]
            lines.append(
                f"| {y} | "
                + " | ".join("" if c is None else f"{c:.4f}" for c in cells[:3])
                + f" | {'' if cells[3] is None else ('yes' if cells[3] else 'no')} |"
            )
    lines += ["", "| # | category | questions | accuracy |", "|---|---|---|---|"]
    for i, (c, n, a) in enumerate(category_accuracy(result["rows"])):
        lines.append(f"| {i + 1} | {c} | {n} | {a:.4f} |")
    return "\n".join(lines) + "\n"
