"""Evaluate a base model or an adapter on exam questions (DESIGN.md §5) and log one MLflow run.

    evaluate(EvalConfig) -> run id          jmed evaluate / mlflow run . -e evaluate

Two inference engines, both batched and written against a plain HF causal LM + tokenizer, tokenising
exactly as training does (`jmed.train.encode`):
- `generate`: greedy decoding, left padding + attention mask, KV cache, stop at EOS or `max_new_tokens`.
- `loglik`: each prompt is run once, right-padded (the causal mask alone is exact), logits taken only
  where each prompt ends; single-token continuations (letters) are read from there. Longer ones (choice
  text) reuse the prompt's KV cache, repeated per choice, in one more batched pass.

Protocols: letter (generate, parse letters), text (generate choice text: exact match, gestalt, gestalt
top-k), loglik (top-k choices, k = gold answer count; also k from 「Nつ選べ」). An adapter's run also
records its delta against the base model on the same data and settings: a matching FINISHED base run
in the store is reused, else the base (adapter disabled) is evaluated now as a child run.
`eval/questions_per_s` counts inference only (rendering, tokenising, forward passes), not loading.
"""
from __future__ import annotations

import time


def _sorted_batches(lengths: list[int], batch_size: int):
    """Indices in batches of similar length (longest first: less padding, OOM shows up early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), max(1, batch_size)):
        yield order[start:start + batch_size]


def _left_pad(seqs: list[list[int]], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(s)
            mask[row, width - len(s):] = 1
    return ids, mask


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="q", dynamic_ncols=True, leave=False)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; cannot batch")
    return pad


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids exactly as training builds them (`jmed.train.encode`: BOS added unless present)."""
    from jmed.train import encode

    return encode(prompt, "", tokenizer)[0]


def encode_continuation(tokenizer, continuation: str) -> list[int]:
    """Answer token ids as training builds its targets (`jmed.train.encode`: encoded on their own), minus EOS."""
    from jmed.train import encode

    return encode("", continuation, tokenizer)[1][:-1]


def generate_ids(model, tokenizer, prompts: list[str], batch_size: int = 8, max_new_tokens: int = 16,
                 desc: str = "generate") -> list[list[int]]:
    """Greedy new token ids per prompt (EOS and what follows cut off), in input order."""
    import torch

    pad = _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    bar = _progress(len(prompts), desc)
    with torch.inference_mode():
        for batch in _sorted_batches([len(e) for e in encoded], batch_size):
            ids, mask = _left_pad([encoded[i] for i in batch], pad)
            gen = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad, eos_token_id=eos,
                temperature=None, top_p=None, top_k=None,
            )
            new = gen[:, ids.shape[1]:].tolist()
            for row, i in enumerate(batch):
                toks = new[row]
                out[i] = toks[: toks.index(eos)] if eos is not None and eos in toks else toks
            bar.update(len(batch))
    bar.close()
    return out


def generate(model, tokenizer, prompts: list[str], batch_size: int = 8, max_new_tokens: int = 16,
             desc: str = "generate") -> list[str]:
    """Greedy continuations of `prompts` (decoded, special tokens skipped), in input order."""
    ids = generate_ids(model, tokenizer, prompts, batch_size, max_new_tokens, desc)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in ids]


def _forward_kwargs(model) -> dict:
    """What the model's forward accepts: `logits_to_keep`, and `cache` (transformers 5) or `past_key_values`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return {"keep": "logits_to_keep" in params, "cache": "cache" if "cache" in params else "past_key_values"}


def loglik(model, tokenizer, prompts: list[str], continuations: list[list[str]], batch_size: int = 8,
           desc: str = "loglik") -> list[list[float]]:
    """Sum of log-probabilities of each continuation given its prompt: `scores[q][c]`.

    Each prompt is encoded and run once; its KV cache is repeated per choice (`reorder_cache`) and all
    continuations of the batch are scored in a single second forward pass.
    """
    import torch

    pad = _pad_id(tokenizer)
    p_ids = [encode_prompt(tokenizer, p) for p in prompts]
    c_ids = [[encode_continuation(tokenizer, c) for c in cs] for cs in continuations]
    for q, cs in enumerate(c_ids):
        for c, ids in enumerate(cs):
            if not ids:
                raise ValueError(f"continuation {continuations[q][c]!r} of prompt {q} encodes to no tokens")
    scores: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    kw = _forward_kwargs(model)
    bar = _progress(len(prompts), desc)
    with torch.inference_mode():
        for batch in _sorted_batches([len(e) for e in p_ids], batch_size):
            # Prompts right-padded with no attention mask: pads come after every real token, so the plain
            # causal mask is exact and attention takes its fast path. Logits only where a prompt ends.
            seqs = [p_ids[i] for i in batch]
            width = max(len(x) for x in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, x in enumerate(seqs):
                ids[row, : len(x)] = torch.tensor(x)
                mask[row, : len(x)] = 1
            ids, mask = ids.to(device), mask.to(device)
            ends = torch.tensor([len(x) - 1 for x in seqs], device=device)
            keep = torch.unique(ends)  # sorted
            multi = any(len(c) > 1 for i in batch for c in c_ids[i])
            if kw["keep"]:
                res = model(input_ids=ids, use_cache=multi, logits_to_keep=keep)
                last = res.logits[torch.arange(len(seqs), device=device), torch.searchsorted(keep, ends)]
            else:
                res = model(input_ids=ids, use_cache=multi)
                last = res.logits[torch.arange(len(seqs), device=device), ends]
            first = torch.log_softmax(last.float(), dim=-1).tolist()  # next-token log-probs per prompt
            if not multi:
                for row, i in enumerate(batch):
                    scores[i] = [first[row][c[0]] for c in c_ids[i]]
                bar.update(len(batch))
                continue
            # Second pass: one row per (question, choice) on the question's prompt cache, repeated per
            # choice; each continuation (minus its last token) starts right after its own prompt.
            rows = [(row, i, c) for row, i in enumerate(batch) for c in c_ids[i]]
            rows_idx = torch.tensor([r for r, _, _ in rows], device=device)
            cache = getattr(res, "cache", None) or res.past_key_values
            cache.reorder_cache(rows_idx)
            cwidth = max(1, max(len(c) for _, _, c in rows) - 1)
            cont = torch.full((len(rows), cwidth), pad, dtype=torch.long)
            cmask = torch.zeros_like(cont)
            for k, (_, _, c) in enumerate(rows):
                if len(c) > 1:
                    cont[k, : len(c) - 1] = torch.tensor(c[:-1])
                    cmask[k, : len(c) - 1] = 1
            cont, cmask = cont.to(device), cmask.to(device)
            cpos = (ends[rows_idx] + 1).unsqueeze(1) + torch.arange(cwidth, device=device)
            out = model(input_ids=cont, attention_mask=torch.cat([mask[rows_idx], cmask], dim=1), position_ids=cpos,
                        use_cache=False, **{kw["cache"]: cache})
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            tgt = torch.full((len(rows), cwidth), 0, dtype=torch.long)
            for k, (_, _, c) in enumerate(rows):
                tgt[k, : len(c) - 1] = torch.tensor(c[1:], dtype=torch.long)
            picked = (logp.gather(-1, tgt.to(device).unsqueeze(-1)).squeeze(-1) * cmask).sum(-1).tolist()
            per_q: dict[int, list[float]] = {}
            for k, (row, i, c) in enumerate(rows):
                per_q.setdefault(i, []).append(first[row][c[0]] + picked[k])
            for i, vals in per_q.items():
                scores[i] = vals
            bar.update(len(batch))
    bar.close()
    return scores


def loglik_concat(model, tokenizer, prompts: list[str], continuations: list[list[str]],
                  batch_size: int = 8) -> list[list[float]]:
    """Reference implementation (no cache sharing): every prompt+choice is its own sequence.

    Kept for tests (it must agree with `loglik`) and the benchmark's engine comparison.
    """
    import torch

    pad = _pad_id(tokenizer)
    items = []
    for q, (p, cs) in enumerate(zip(prompts, continuations)):
        pi = encode_prompt(tokenizer, p)
        for c in cs:
            items.append((q, pi, encode_continuation(tokenizer, c)))
    scores: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            ids, mask = _left_pad([pi + ci for _, pi, ci in chunk], pad)
            ids, mask = ids.to(device), mask.to(device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float(), -1)
            width = ids.shape[1]
            for row, (q, pi, ci) in enumerate(chunk):
                n = len(ci)
                tgt = torch.tensor(ci, device=device)
                positions = torch.arange(width - n - 1, width - 1, device=device)
                scores[q].append(logp[row, positions, tgt].sum().item())
    return scores


# ---- adapters -------------------------------------------------------------------------------------

ADAPTER_META = "jmed.json"


def resolve_adapter(ref: str):
    """A local adapter folder from a train run id, `runs:/<id>[/path]`, `models:/<name>/<version|@alias>`
    (a registered pyfunc model with an `adapter` artifact), or a local folder."""
    import re
    from pathlib import Path

    ref = (ref or "").strip()
    if not ref:
        raise ValueError("no adapter reference given")
    local = Path(ref).expanduser()
    if local.is_dir():
        return _adapter_dir(local, ref)
    from jmed import tracking

    mlflow = tracking.setup()
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        ref = f"runs:/{ref}/adapter"
    if ref.startswith("runs:/"):
        if ref.rstrip("/").count("/") == 1:  # runs:/<id> alone
            ref = ref.rstrip("/") + "/adapter"
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
        except Exception as exc:  # noqa: BLE001 - re-raised with the reference named
            raise ValueError(f"adapter {ref}: cannot download it from {tracking.tracking_uri()}: {exc}") from exc
        return _adapter_dir(path, ref)
    if ref.startswith("models:/"):
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"adapter {ref}: cannot download the registered model: {exc}") from exc
        return _adapter_dir(_pyfunc_artifact(path, "adapter", ref), ref)
    raise ValueError(f"adapter {ref!r}: expected a train run id, runs:/<id>/adapter, models:/<name>/<version "
                     "or @alias>, or a local adapter folder")


def _pyfunc_artifact(model_dir, name: str, ref: str):
    import yaml

    mlmodel = model_dir / "MLmodel"
    if mlmodel.exists():
        spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        arts = (spec.get("flavors", {}).get("python_function", {}) or {}).get("artifacts", {}) or {}
        if name in arts:
            return model_dir / arts[name]["path"]
    for cand in (model_dir / "artifacts" / name, model_dir / name):
        if cand.is_dir():
            return cand
    raise ValueError(f"adapter {ref}: the model has no {name!r} artifact (looked in {model_dir})")


def _adapter_dir(path, ref: str):
    if not (path / "adapter_config.json").exists() and (path / "adapter" / "adapter_config.json").exists():
        path = path / "adapter"
    if not (path / "adapter_config.json").exists():
        raise ValueError(f"adapter {ref}: {path} holds no adapter_config.json")
    return path


def adapter_meta(adapter_dir) -> dict:
    """The adapter's own record (`jmed.json`: model, prompt format, shots, protocol, train run, data digest)."""
    import json

    path = adapter_dir / ADAPTER_META
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


# ---- one pass over the questions ------------------------------------------------------------------

PROTOCOLS = ("letter", "text", "loglik")


def run_questions(model, tokenizer, questions, protocol: str, prompt_format: str, shots: int = 0, parsing: str = "lenient",
                  batch_size: int = 8, max_new_tokens: int = 16, desc: str = "") -> dict:
    """Predict and score `questions`; returns {"rows": per-question dicts, "metrics": {...}, "summary": ...}.

    Numeric-entry questions are skipped (and counted) in the text and loglik protocols, which need choices.
    `shots` solved examples precede each question, chosen as training chooses them (`jmed.train.shots_for`:
    the next questions of the same data, cyclically; never the question itself).
    """
    from jmed import metrics as M
    from jmed.prompts import LETTERS, render
    from jmed.train import shots_for

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    qs = list(questions) if protocol == "letter" else [q for q in questions if not q.numeric]
    skipped = len(questions) - len(qs)
    prompts = [render(q, prompt_format, shots_for(qs, i, shots), tokenizer).prompt for i, q in enumerate(qs)]
    started = time.perf_counter()
    extra: dict = {}
    if protocol == "loglik":
        # Letter formats score the letters a, b, …; text formats score the choice texts themselves.
        conts = [list(LETTERS[: len(q.choices)]) if _is_letter_format(prompt_format) else list(q.choices)
                 for q in qs]
        scores = loglik(model, tokenizer, prompts, conts, batch_size, desc=desc or "loglik")
        seconds = time.perf_counter() - started
        by_id = {q.id: sc for q, sc in zip(qs, scores)}
        summary = M.loglik_summary(qs, by_id)
        extra["accuracy_k_from_stem"] = summary["accuracy_stem_k"]
        outputs = [" ".join(f"{LETTERS[i]}:{v:.3f}" for i, v in enumerate(sc)) for sc in scores]
        preds = {q.id: ",".join(M.letters_of(M.loglik_pick(by_id[q.id], q.n_answers))) for q in qs}
        rows = M.letter_rows(qs, preds, M.OFFICIAL)
    else:
        outputs = generate(model, tokenizer, prompts, batch_size, max_new_tokens, desc=desc or protocol)
        seconds = time.perf_counter() - started
        if protocol == "letter":
            preds = {q.id: out for q, out in zip(qs, outputs)}
            summary = M.letter_summary(qs, preds, parsing)
            rows = M.letter_rows(qs, preds, parsing)
        else:
            responses = {q.id: out for q, out in zip(qs, outputs)}
            text = M.text_summary(qs, responses)
            picks = {r["id"]: r["pick"] for r in M.text_rows(qs, responses)}
            summary = M.letter_summary(qs, picks, M.OFFICIAL)  # accuracy, score, … of the gestalt picks
            rows = M.letter_rows(qs, picks, M.OFFICIAL)
            extra.update(exact_match=text["exact_match"], gestalt=text["gestalt"],
                         gestalt_accuracy=text["gestalt_accuracy"])
            for year, ys in text["by_year"].items():
                for key in ("exact_match", "gestalt", "gestalt_accuracy"):
                    extra[f"{year}/{key}"] = ys[key]
    table = [{"id": r["id"], "year": r["year"] or 0, "category": r["category"], "prompt": p, "output": out,
              "parsed": r["parsed"] or "", "gold": r["gold"], "correct": bool(r["correct"]),
              "points": float(r["points_scored"]), "max_points": float(r["points"])}
             for r, p, out in zip(rows, prompts, outputs)]
    metrics = _metrics(summary, extra, len(qs), skipped, seconds)
    return {"rows": table, "metrics": metrics, "summary": summary, "seconds": seconds}


def _is_letter_format(fmt: str) -> bool:
    from jmed.prompts import protocol_for

    return protocol_for(fmt) == "letter"


def _metric_key(name: str) -> str:
    import re

    return re.sub(r"[^\w\-. :/]", "_", str(name)).strip() or "_"


def _metrics(summary: dict, extra: dict, n: int, skipped: int, seconds: float) -> dict:
    m = {"eval/questions": n, "eval/skipped_numeric": skipped,
         "eval/questions_per_s": n / seconds if seconds > 0 else 0.0}
    for key in ("accuracy", "correct", "score", "points", "points_total", "required_score", "unparsed",
                "kinki_selected"):
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
            m[_metric_key(f"eval/category/{cat}/accuracy")] = float(cs["accuracy"])
    return m


# ---- the evaluate step ----------------------------------------------------------------------------

MATCH_PARAMS = ("model", "base_revision", "eval_data_digest", "protocol", "prompt_format", "shots", "parsing",
                "limit", "quantization")


def _resolve(cfg, meta: dict):
    """Fill the "" / negative defaults (model "", shots < 0, quantization ""): the adapter's own settings,
    else tiny / letter / igakuqa / 0 shots / no quantization."""
    import dataclasses

    from jmed.prompts import check_format, protocol_for

    model = cfg.model or meta.get("model") or "tiny"
    if meta.get("model") and model != meta["model"]:
        raise ValueError(f"adapter {cfg.adapter} was trained on {meta['model']!r}, not on model {model!r}; "
                         f"pass --model {meta['model']} (or leave --model empty)")
    fmt = cfg.prompt_format or meta.get("prompt_format") or "igakuqa"
    check_format(fmt)
    protocol = cfg.protocol or protocol_for(fmt)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if protocol in ("letter", "text") and protocol != protocol_for(fmt):
        raise ValueError(f"protocol {protocol!r} cannot read answers of prompt format {fmt!r} (its answers are "
                         f"{'letters' if protocol_for(fmt) == 'letter' else 'choice text'}); use protocol "
                         f"{protocol_for(fmt)!r} or loglik")
    shots = cfg.shots if cfg.shots >= 0 else int(meta.get("shots", 0) or 0)
    if cfg.parsing not in ("official", "lenient"):
        raise ValueError(f"unknown parsing {cfg.parsing!r}; choose official or lenient")
    if cfg.batch_size < 1 or cfg.max_new_tokens < 1 or cfg.limit < 0 or shots < 0:
        raise ValueError("batch_size and max_new_tokens must be >= 1; limit and shots >= 0")
    quantization = cfg.quantization or str((meta.get("config") or {}).get("quantization", "") or "none")
    return dataclasses.replace(cfg, model=model, prompt_format=fmt, protocol=protocol, shots=shots,
                               quantization=quantization)


def load_eval_questions(cfg):
    from jmed.data import SAMPLE_TEST, load_questions

    path = cfg.eval_data or str(SAMPLE_TEST)
    questions = load_questions(path, cfg.data_format, cfg.filters)
    if cfg.limit:
        questions = questions[: cfg.limit]
    if not questions:
        raise ValueError(f"no questions to evaluate in {path} after filters")
    return path, questions


def evaluate(cfg) -> str:
    """Evaluate `cfg.model` (+ `cfg.adapter`) on the eval data; log one run (DESIGN.md §6); return its id."""
    import mlflow
    import torch

    from jmed import data as D
    from jmed import models, tracking

    with tracking.step_run("evaluate", run_name=None) as run:
        adapter_dir = resolve_adapter(cfg.adapter) if cfg.adapter else None
        meta = adapter_meta(adapter_dir) if adapter_dir else {}
        cfg = _resolve(cfg, meta)
        path, questions = load_eval_questions(cfg)
        digest = D.digest(questions)
        torch.manual_seed(cfg.seed)
        base, tokenizer, info = models.load_base(cfg.model, cfg.quantization, cfg.precision)
        if meta.get("base_revision") and meta["base_revision"] != info.get("revision"):
            import warnings

            warnings.warn(f"adapter {cfg.adapter} was trained on {cfg.model} revision {meta['base_revision']}, "
                          f"evaluating on revision {info.get('revision')} (both are logged)", stacklevel=2)
        model = models.load_adapter(base, adapter_dir) if adapter_dir else base
        model.eval()
        train_run = meta.get("train_run_id", "") if adapter_dir else ""
        tags = {tracking.BASE_TAG: info["slug"], "jmed.adapter_run": train_run or ("unknown" if adapter_dir else "none")}
        mlflow.set_tags(tags)
        mlflow.set_tag("mlflow.runName", f"evaluate-{info['slug']}-{(train_run or 'base')[:8]}-{cfg.protocol}")
        params = {**_flat(cfg), "eval_data_path": path, "eval_data_digest": digest,
                  "base_revision": info.get("revision", ""), "tokenizer_hash": info.get("tokenizer_hash", ""),
                  "adapter_train_run": train_run, "adapter_train_data_digest": meta.get("train_data_digest", ""),
                  "adapter_base_revision": meta.get("base_revision", ""), "questions": len(questions)}
        tracking.log_params(params)
        tracking.log_dataset(questions, name=_data_name(path), path=path, digest=digest, context="eval")
        result = run_questions(model, tokenizer, questions, cfg.protocol, cfg.prompt_format, cfg.shots, cfg.parsing,
                               cfg.batch_size, cfg.max_new_tokens, desc=f"evaluate {cfg.protocol}")
        base_metrics = None
        if adapter_dir and cfg.compare_base:
            base_run, base_metrics = _base_comparison(cfg, params, info, model, tokenizer, questions)
            params["base_eval_run"] = base_run
            tracking.log_params({"base_eval_run": base_run})
        _log_result(result, cfg, params, base_metrics)
        return run.info.run_id


def _flat(cfg) -> dict:
    from jmed.config import flat

    return flat(cfg)


def _data_name(path: str) -> str:
    from pathlib import Path

    p = Path(path)
    return p.stem if p.is_file() else p.name


DELTA_KEYS = ("accuracy", "score", "required_score", "exact_match", "gestalt", "gestalt_accuracy", "unparsed",
              "accuracy_k_from_stem")


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
    runs = client.search_runs(experiments, " and ".join(clauses), order_by=["attributes.start_time DESC"],
                              max_results=1)
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
    base_cfg = dataclasses.replace(cfg, adapter="", compare_base=False)
    base_params = {**params, **_flat(base_cfg), "adapter_train_run": "", "adapter_train_data_digest": "",
                   "adapter_base_revision": ""}
    tags = {tracking.BASE_TAG: info["slug"], "jmed.adapter_run": "none"}
    name = f"evaluate-{info['slug']}-base-{cfg.protocol}"
    with tracking.step_run("evaluate", run_name=name, nested=True, tags=tags) as child:
        tracking.log_params(base_params)
        tracking.log_dataset(questions, name=_data_name(params["eval_data_path"]), path=params["eval_data_path"],
                             digest=params["eval_data_digest"], context="eval")
        off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with off:
            result = run_questions(model, tokenizer, questions, cfg.protocol, cfg.prompt_format, cfg.shots,
                                   cfg.parsing, cfg.batch_size, cfg.max_new_tokens, desc=f"base {cfg.protocol}")
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


def _cjk_font() -> str | None:
    from matplotlib import font_manager

    for f in font_manager.fontManager.ttflist:
        if any(k in f.name for k in ("CJK", "Noto Sans JP", "IPA", "Takao", "Hiragino", "Yu Gothic", "Meiryo")):
            return f.name
    return None


def plot_categories(rows: list[dict]):
    """Horizontal bars of accuracy per category. Without a Japanese font the bars are numbered and
    summary.md maps numbers to names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = category_accuracy(rows)
    font = _cjk_font()
    labels = [f"{c} (n={n})" if font or c.isascii() else f"#{i + 1} (n={n})" for i, (c, n, _) in enumerate(cats)]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(cats) + 1.2))
    ax.barh(range(len(cats)), [a for _, _, a in cats], color="#4C72B0")
    ax.set_yticks(range(len(cats)), labels, fontfamily=font or "sans-serif")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy" if font or all(c.isascii() for c, _, _ in cats) else "accuracy (#: see summary.md)")
    ax.set_title("Accuracy per category")
    fig.tight_layout()
    return fig


def summary_markdown(result: dict, cfg, params: dict, metrics: dict) -> str:
    adapter = cfg.adapter or "none (base model)"
    lines = [f"# Evaluation: {cfg.model} + adapter {adapter}", "",
             f"- data: `{params['eval_data_path']}` ({params['questions']} questions, digest "
             f"`{params['eval_data_digest'][:12]}`), skipped numeric-entry: {int(metrics['eval/skipped_numeric'])}",
             f"- protocol `{cfg.protocol}`, prompt format `{cfg.prompt_format}`, {cfg.shots}-shot, parsing "
             f"`{cfg.parsing}`, {metrics['eval/questions_per_s']:.1f} questions/s", ""]
    if params.get("base_eval_run"):
        lines.insert(4, f"- compared with base run `{params['base_eval_run']}`")
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
            lines.append(f"| {y} | " + " | ".join("" if c is None else f"{c:.4f}" for c in cells[:3])
                         + f" | {'' if cells[3] is None else ('yes' if cells[3] else 'no')} |")
    lines += ["", "| # | category | questions | accuracy |", "|---|---|---|---|"]
    for i, (c, n, a) in enumerate(category_accuracy(result["rows"])):
        lines.append(f"| {i + 1} | {c} | {n} | {a:.4f} |")
    return "\n".join(lines) + "\n"
