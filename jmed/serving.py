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

Imports only jmed.contract (the input checks), jmed.adapter, jmed.prompts, jmed.models, jmed.inference
(the batched engines evaluation uses too) and jmed.metrics (answer parsing); never train or evaluate.
Importing this file registers the model with MLflow (models-from-code): nothing else imports it.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel

from jmed import adapter
from jmed.contract import MAX_NEW_TOKENS_LIMIT, check_inputs, check_params, invalid
from jmed.prompts import LETTERS, base_format

# the signature is given explicitly when logging; MLflow's hint to use type hints instead is noise
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)


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
