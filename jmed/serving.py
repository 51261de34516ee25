"""The served model: an MLflow pyfunc logged as code (`python_model=<this file>`), nothing pickled.

Artifacts: `adapter` (adapter_model.safetensors, adapter_config.json, jmed.json with the prompt format,
protocol and training config) and, for small or local bases, `base` (the base model's folder). A hub
base is not copied: `model_config` names it by id and pinned revision, and loading checks the revision.

Input (one row per question): `question` (string), `choices` (list of strings), optional `n_answers`
(int; default: 「Nつ選べ」 in the stem, else 1). Params: `protocol` (letter | text | loglik; default the
adapter's) and `max_new_tokens`. Output: `answer` (letters, "d,e"), `answer_text` (the chosen choices,
one per line), `raw_output` (the generated text; for loglik the per-choice log-likelihoods as JSON).
Every input is checked before the model runs; a bad one raises MlflowException(INVALID_PARAMETER_VALUE),
which `mlflow models serve` answers with HTTP 400 and the message.

Imports only jmed.prompts, jmed.models, jmed.inference (the batched engines evaluation uses too) and
jmed.metrics (answer parsing); never train or evaluate.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel

from jmed import adapter
from jmed.prompts import LETTERS, base_format

# the signature is given explicitly when logging; MLflow's hint to use type hints instead is noise
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)

MAX_CHOICES = 10
MAX_CHARS = 20_000
MAX_ROWS = 256
PROTOCOLS = ("letter", "text", "loglik")
DEFAULT_MAX_NEW_TOKENS = 0  # 0: fit each question's answers, as evaluation does (inference.answer_budget)
MAX_NEW_TOKENS_LIMIT = 1024


def invalid(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_inputs(model_input) -> list[dict]:
    """Rows as {"question", "choices", "n_answers"}; every problem found is reported at once."""
    import numpy as np
    import pandas as pd

    from jmed.metrics import n_select

    if isinstance(model_input, dict):
        model_input = [model_input]
    if isinstance(model_input, list):
        if not all(isinstance(r, dict) for r in model_input):
            raise invalid("input must be a list of records {question, choices[, n_answers]}")
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        raise invalid(f"input must be a table of questions, got {type(model_input).__name__}")
    missing = [c for c in ("question", "choices") if c not in model_input.columns]
    if missing:
        raise invalid(f"missing input field(s): {', '.join(missing)}")
    if len(model_input) == 0:
        raise invalid("no questions in the input")
    if len(model_input) > MAX_ROWS:
        raise invalid(f"{len(model_input)} questions in one request; at most {MAX_ROWS}")
    unknown = sorted(set(model_input.columns) - {"question", "choices", "n_answers"})
    errors = [f"unknown input field(s): {', '.join(map(str, unknown))}"] if unknown else []
    rows = []
    for i, rec in enumerate(model_input.to_dict("records")):
        where = f"record {i}"
        q, ch, n = rec.get("question"), rec.get("choices"), rec.get("n_answers")
        if _missing(q):
            errors.append(f"{where}: 'question' is missing")
        elif not isinstance(q, str):
            errors.append(f"{where}: 'question' must be a string, got {type(q).__name__}")
        elif not q.strip():
            errors.append(f"{where}: 'question' is empty")
        elif len(q) > MAX_CHARS:
            errors.append(f"{where}: 'question' has {len(q)} characters; at most {MAX_CHARS}")
        if isinstance(ch, np.ndarray):
            ch = ch.tolist()
        if _missing(ch):
            errors.append(f"{where}: 'choices' is missing")
            ch = None
        elif not isinstance(ch, (list, tuple)):
            errors.append(f"{where}: 'choices' must be a list of strings, got {type(ch).__name__}")
            ch = None
        elif not ch:
            errors.append(f"{where}: 'choices' is empty")
            ch = None
        elif len(ch) > MAX_CHOICES:
            errors.append(f"{where}: 'choices' has {len(ch)} entries; at most {MAX_CHOICES}")
            ch = None
        else:
            for j, c in enumerate(ch):
                if not isinstance(c, str):
                    errors.append(f"{where}: choices[{j}] must be a string, got {type(c).__name__}")
                    ch = None
                elif not c.strip():
                    errors.append(f"{where}: choices[{j}] is empty")
                elif len(c) > MAX_CHARS:
                    errors.append(f"{where}: choices[{j}] has {len(c)} characters; at most {MAX_CHARS}")
        if _missing(n):
            n = n_select(q) if isinstance(q, str) else 1
        elif isinstance(n, bool) or not isinstance(n, (int, np.integer, float)) or float(n) != int(n):
            errors.append(f"{where}: 'n_answers' must be an integer, got {n!r}")
            n = None
        else:
            n = int(n)
        if ch is not None and n is not None and not 1 <= n <= len(ch):
            errors.append(f"{where}: 'n_answers' is {n}; must be between 1 and the {len(ch)} choices")
        rows.append({"question": q, "choices": list(ch or []), "n_answers": n})
    if errors:
        raise invalid("invalid input: " + "; ".join(errors[:20])
                      + (f"; … and {len(errors) - 20} more" if len(errors) > 20 else ""))
    return rows


def check_params(params: dict | None, default_protocol: str) -> tuple[str, int]:
    params = params or {}
    unknown = sorted(set(params) - {"protocol", "max_new_tokens"})
    if unknown:
        raise invalid(f"unknown param(s): {', '.join(unknown)}; known: protocol, max_new_tokens")
    protocol = params.get("protocol") or default_protocol
    if protocol not in PROTOCOLS:
        raise invalid(f"param 'protocol' is {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    tokens = params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= MAX_NEW_TOKENS_LIMIT:
        raise invalid(f"param 'max_new_tokens' is {tokens!r}; must be an integer from 0 (fit the answers) "
                      f"to {MAX_NEW_TOKENS_LIMIT}")
    return protocol, tokens


class JmedModel(PythonModel):
    """A base model plus a LoRA adapter answering exam questions in the adapter's prompt format."""

    def load_context(self, context):
        from jmed.models import load_adapter, load_base

        adapter_dir = Path(context.artifacts["adapter"])
        self.meta = adapter.read(adapter_dir)
        config = dict(context.model_config or {})
        base = context.artifacts.get("base") or config.get("base_model") or self.meta["model"]
        model, tokenizer, info = load_base(base, quantization=config.get("quantization", "none"),
                                           precision=config.get("precision", "auto"))
        want = config.get("base_revision") or self.meta.get("base_revision")
        if want and info.get("revision") and info["revision"] != want:
            raise invalid(f"base model {base!r} has revision {info['revision']}, but the adapter was trained "
                          f"on revision {want}; fetch that revision")
        model = load_adapter(model, adapter_dir)
        if config.get("quantization", "none") in ("", "none"):
            model = model.merge_and_unload()  # plain weights: no LoRA detour per layer at inference
        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.format = adapter.prompt_format(self.meta)
        self.protocol = adapter.protocol(self.meta)

    def prompt(self, row: dict) -> str:
        from jmed.prompts import apply_chat, render_prompt

        text = render_prompt(row["question"], row["choices"], self.format, row["n_answers"])
        return apply_chat(text, self.tokenizer) if self.format.startswith("chat") else text

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from jmed.inference import answer_budget, generate, loglik

        rows = check_inputs(model_input)
        protocol, max_new_tokens = check_params(params, self.protocol)
        prompts = [self.prompt(r) for r in rows]
        if protocol == "loglik":
            # The same batched engine as evaluation: each prompt encoded once, letters or choice text scored.
            letters = base_format(self.format) == "igakuqa"
            conts = [list(LETTERS[: len(r["choices"])]) if letters else list(r["choices"]) for r in rows]
            scores = loglik(self.model, self.tokenizer, prompts, conts, batch_size=len(rows), desc=None)
            out = [self._picked(s, r) for s, r in zip(scores, rows)]
        else:
            limits = [min(max_new_tokens or answer_budget(self.tokenizer, r["choices"], r["n_answers"], protocol),
                          MAX_NEW_TOKENS_LIMIT) for r in rows]
            raws = generate(self.model, self.tokenizer, prompts, batch_size=len(rows), max_new_tokens=limits,
                            desc=None)
            out = [self._answer(raw, r, protocol) for raw, r in zip(raws, rows)]
        return pd.DataFrame(out, columns=["answer", "answer_text", "raw_output"])

    def _answer(self, raw: str, row: dict, protocol: str) -> dict:
        from jmed.metrics import letters_of, parse_letters, topk_by_gestalt
        from jmed.prompts import extract_response

        choices = row["choices"]
        if protocol == "letter":
            letters = parse_letters(raw, len(choices)) or ()
        else:
            letters = letters_of(topk_by_gestalt(extract_response(raw), choices, row["n_answers"]))
        return self._row(letters, choices, raw)

    def _picked(self, scores: list[float], row: dict) -> dict:
        """Top-k choices by log-likelihood; the raw output shows every choice's score."""
        from jmed.metrics import letters_of, loglik_pick

        letters = letters_of(loglik_pick(scores, row["n_answers"]))
        return self._row(letters, row["choices"], json.dumps({a: round(s, 4) for a, s in zip(LETTERS, scores)}))

    @staticmethod
    def _row(letters, choices, raw) -> dict:
        letters = tuple(sorted(letters))
        text = "\n".join(choices[LETTERS.index(a)] for a in letters if LETTERS.index(a) < len(choices))
        return {"answer": ",".join(letters), "answer_text": text, "raw_output": raw}


mlflow.models.set_model(JmedModel())
