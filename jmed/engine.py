"""Inference engines: the answers of evaluate, study, main, predict and reproduce come from one of two.

- `hf`: jmed's own loop (jmed.inference) around a transformers model in this process: exact and
  deterministic on CPU, loads anything transformers loads (4-bit, 8-bit, trust_remote_code).
- `vllm`: a vLLM server speaking the OpenAI API, started by jmed (`start_vllm`: its own environment
  `.venv-vllm`, bounded memory, never outliving the step, see jmed.reaper) or already running
  (`--engine-url http://host:port/v1`: a team's 70B model with tensor parallelism on its own GPUs).

Both engines get the same token ids: prompts are rendered by jmed.prompts and encoded by
`jmed.inference.encode_prompt` here, and vLLM is sent the ids, not the text, so BOS handling and chat
templates cannot differ. Generated ids come back (`return_token_ids`) and are decoded here with the
same tokenizer. The log-likelihood protocol asks for the next-token log-probabilities of the choice
letters only (`allowed_token_ids` with the engine's logprobs taken after that mask: one token
generated per question, no prompt logits); a continuation longer than one token (choice text) is
scored from its `prompt_logprobs` instead, as lm-evaluation-harness does with `echo`.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

ENGINES = ("hf", "vllm")
SERVED_NAME = "jmed"  # the model name jmed's own vLLM server answers to
# CPU KV cache for an engine jmed starts (GiB, VLLM_CPU_KVCACHE_SPACE); a user's setting wins.
CPU_KV_CACHE_GIB = 2
GPU_MEMORY_UTILIZATION = 0.85  # the share of GPU memory vLLM may take, when jmed starts it on a GPU
MAX_LOGPROBS = 32  # letters a…z fit
REQUEST_CHUNK = 16  # prompts per HTTP request; several requests in flight keep the engine's batch full
# About this many prompts in flight at once (requests_in_flight), in at most MAX_REQUESTS requests.
IN_FLIGHT_PROMPTS = 128
MAX_REQUESTS = 64


class EngineError(ValueError):
    """An engine that cannot start or cannot serve the model, with the model and the reason."""


# ---- the hf engine --------------------------------------------------------------------------------


class HFEngine:
    """jmed.inference on a transformers model in this process."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 8, max_batch_tokens: int = 0):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_batch_tokens = max_batch_tokens  # 0: jmed.config.MAX_BATCH_TOKENS

    def generate(self, prompts, limits, desc=None):
        from jmed.inference import generate

        return generate(
            self.model,
            self.tokenizer,
            prompts,
            self.batch_size,
            limits,
            desc=desc,
            with_truncated=True,
            max_batch_tokens=self.max_batch_tokens,
        )

    def loglik(self, prompts, continuations, desc=None):
        from jmed.inference import loglik

        return loglik(self.model, self.tokenizer, prompts, continuations, self.batch_size, desc, self.max_batch_tokens)


# ---- the vLLM engine (an OpenAI-compatible server) ------------------------------------------------


class VLLMEngine:
    """Greedy generation and letter log-likelihoods from a vLLM server at `url` (…/v1)."""

    name = "vllm"

    def __init__(self, url: str, tokenizer, model: str = "", timeout: float = 600.0):
        import threading

        self.url, self.tokenizer, self.timeout = url.rstrip("/"), tokenizer, timeout
        self._local = threading.local()
        self.model = model or self._only_model()

    def _session(self):
        import requests

        if not hasattr(self._local, "s"):
            self._local.s = requests.Session()
        return self._local.s

    def _post(self, path: str, body: dict) -> dict:
        import requests

        try:
            r = self._session().post(f"{self.url}{path}", json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise EngineError(f"vLLM engine at {self.url}: {exc}") from exc
        if r.status_code != 200:
            raise EngineError(f"vLLM engine at {self.url} answered {r.status_code} to {path}: {r.text[:500]}")
        return r.json()

    def _only_model(self) -> str:
        import requests

        try:
            r = self._session().get(f"{self.url}/models", timeout=30)
            r.raise_for_status()
            ids = [m["id"] for m in r.json().get("data", [])]
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise EngineError(
                f"vLLM engine at {self.url}: cannot list its models ({exc}); is it an OpenAI-compatible server (…/v1)?"
            ) from exc
        bases = [m for m in ids if SERVED_NAME == m] or ids
        if len(bases) != 1:
            raise EngineError(
                f"vLLM engine at {self.url} serves {len(ids)} models ({', '.join(ids)}); "
                "jmed evaluates the one model it is pointed at"
            )
        return bases[0]

    def _common(self) -> dict:
        return {"model": self.model, "temperature": 0.0, "seed": 0}

    def _chunks(self, keyed: list[tuple[tuple, int]]):
        """Indices grouped by request parameters (`key`), in chunks of REQUEST_CHUNK."""
        groups: dict[tuple, list[int]] = {}
        for key, i in keyed:
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            for s in range(0, len(idx), REQUEST_CHUNK):
                yield key, idx[s : s + REQUEST_CHUNK]

    def _run(self, jobs, fn, total: int, desc):
        from concurrent.futures import ThreadPoolExecutor

        from jmed.inference import _progress

        bar = _progress(total, desc)
        with ThreadPoolExecutor(requests_in_flight(jobs)) as pool:
            for n in pool.map(fn, jobs):
                bar.update(n)
        bar.close()

    def generate(self, prompts, limits, desc=None):
        """(texts, cut-off flags), as jmed.inference.generate: EOS ends an answer; `length` is a cut."""
        from jmed.inference import encode_prompt

        tok = self.tokenizer
        ids = [encode_prompt(tok, p) for p in prompts]
        limits = [limits] * len(prompts) if isinstance(limits, int) else list(limits)
        texts, cut = [""] * len(prompts), [False] * len(prompts)
        eos = tok.eos_token_id

        def one(job):
            (limit,), idx = job
            body = {
                **self._common(),
                "prompt": [ids[i] for i in idx],
                "max_tokens": limit,
                "return_token_ids": True,
                "skip_special_tokens": True,
            }
            if eos is not None:
                body["stop_token_ids"] = [eos]
            out = self._post("/completions", body)["choices"]
            for ch in out:
                i = idx[ch["index"]]
                toks = list(ch.get("token_ids") or [])
                if eos is not None and eos in toks:
                    toks = toks[: toks.index(eos)]
                texts[i] = tok.decode(toks, skip_special_tokens=True)
                cut[i] = ch.get("finish_reason") == "length"
            return len(idx)

        self._run(list(self._chunks([((limits[i],), i) for i in range(len(prompts))])), one, len(prompts), desc)
        return texts, cut

    def loglik(self, prompts, continuations, desc=None):
        """`scores[q][c]`: for single-token continuations (letters) the log-probability of each among the
        question's own choices (normalised over them: the ranking is that of the full vocabulary); for
        longer ones the sum of their token log-probabilities after the prompt."""
        from jmed.inference import encode_choices

        p_ids, c_ids = encode_choices(self.tokenizer, prompts, continuations)
        scores: list[list[float]] = [[] for _ in prompts]
        single = [
            q for q, cs in enumerate(c_ids) if all(len(x) == 1 for x in cs) and len({x[0] for x in cs}) == len(cs)
        ]
        multi = sorted(set(range(len(prompts))) - set(single))

        def letters(job):
            allowed, idx = job
            body = {
                **self._common(),
                "prompt": [p_ids[i] for i in idx],
                "max_tokens": 1,
                "logprobs": len(allowed),
                "allowed_token_ids": list(allowed),
                "return_tokens_as_token_ids": True,
            }
            out = self._post("/completions", body)["choices"]
            for ch in out:
                i = idx[ch["index"]]
                top = (ch.get("logprobs") or {}).get("top_logprobs") or [{}]
                got = {int(k.removeprefix("token_id:")): v for k, v in top[0].items()}
                if any(x[0] not in got for x in c_ids[i]):
                    # an engine whose logprobs are taken before the mask (vLLM's default raw mode)
                    multi.append(i)
                    continue
                scores[i] = [got[x[0]] for x in c_ids[i]]
            return len(idx)

        self._run(list(self._chunks([(tuple(x[0] for x in c_ids[q]), q) for q in single])), letters, len(prompts), desc)

        def echo(q):
            # every choice of the question in one request: vLLM batches them (and shares the prompt's blocks)
            body = {**self._common(), "prompt": [p_ids[q] + c for c in c_ids[q]], "max_tokens": 1, "prompt_logprobs": 0}
            out = sorted(self._post("/completions", body)["choices"], key=lambda ch: ch["index"])
            scores[q] = [
                sum(ch["prompt_logprobs"][len(p_ids[q]) + k][str(t)]["logprob"] for k, t in enumerate(c))
                for ch, c in zip(out, c_ids[q])
            ]
            return 1

        if multi:
            self._run(sorted(set(multi)), echo, len(set(multi)), desc if not single else None)
        return scores


def requests_in_flight(jobs) -> int:
    """How many requests to keep in flight: about IN_FLIGHT_PROMPTS prompts, whatever the requests
    carry. A job is (key, indices) or one question. The text protocol's per-question answer budgets
    split 32 questions into 24 requests of 1-2 prompts, and a fixed 8 requests in flight left vLLM's
    batch at about 10 sequences: 3.2-3.4 questions/s, against 4.3-4.4 with every request in flight
    (letter, in requests of 16, unchanged: 7.4-8.3 against 7.6-7.7)."""
    if not jobs:
        return 1
    prompts = sum(len(j[1]) if isinstance(j, tuple) else 1 for j in jobs)
    return max(1, min(len(jobs), MAX_REQUESTS, round(IN_FLIGHT_PROMPTS * len(jobs) / prompts)))


# ---- starting a vLLM server -----------------------------------------------------------------------


def vllm_python() -> str:
    """The Python of the vLLM environment: JMED_VLLM_PYTHON, else the project's `.venv-vllm` (make install)."""
    import jmed

    env = os.environ.get("JMED_VLLM_PYTHON", "").strip()
    if env:
        return env
    local = Path(jmed.__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"
    if local.exists():
        return str(local)
    raise EngineError(
        "the vllm engine is not installed: `make install` puts it in .venv-vllm, or set "
        "JMED_VLLM_PYTHON to a Python with vllm installed, or pass --engine-url of a running server"
    )


def _on_gpu() -> bool:
    import shutil

    return bool(shutil.which("nvidia-smi")) and os.environ.get("CUDA_VISIBLE_DEVICES", "0") != ""


def vllm_dtype() -> str:
    """vLLM's --dtype: its own choice on a GPU; on CPU bfloat16 where the CPU has bf16 matrix units
    (AMX, AVX-512 BF16: jmed.models.cpu_bf16_units), else float32. Without them bf16 is emulated:
    measured on an AVX2-only EPYC (benchmarks/engines.py), SmolLM2 + LoRA served 0.17 requests/s in bf16
    against 0.29 in float32 at concurrency 1, and 0.10 against 0.40 at concurrency 8."""
    from jmed.models import cpu_bf16_units

    if _on_gpu():
        return "auto"
    return "bfloat16" if cpu_bf16_units() else "float32"


def vllm_command(
    model_dir: str,
    port: int,
    served_names: list[str],
    lora_rank: int = 0,
    max_loras: int = 4,
    max_model_len: int = 0,
    extra: list[str] | None = None,
) -> list[str]:
    """`python -m jmed.reaper -- <vllm python> -m vllm.entrypoints.openai.api_server …` on 127.0.0.1."""
    cmd = [
        sys.executable,
        "-m",
        "jmed.reaper",
        "--",
        vllm_python(),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        *served_names,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        vllm_dtype(),
        "--seed",
        "0",
        "--logprobs-mode",
        "processed_logprobs",
        "--max-logprobs",
        str(MAX_LOGPROBS),
        "--generation-config",
        "vllm",
        "--disable-uvicorn-access-log",
    ]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if _on_gpu():
        cmd += ["--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION)]
    if lora_rank:
        cmd += ["--enable-lora", "--max-lora-rank", str(_lora_rank_bucket(lora_rank)), "--max-loras", str(max_loras)]
    if not _on_gpu() and not compiled_on_cpu():
        cmd += ["--enforce-eager"]
    # anything else for vLLM (--tensor-parallel-size 4, --max-num-seqs 64, …), split like a shell would
    return cmd + list(extra or []) + shlex.split(os.environ.get("JMED_VLLM_ARGS", ""))


def compiled_on_cpu() -> bool:
    """Whether vLLM compiles the model (torch.compile) on CPU: yes unless JMED_VLLM_EAGER=1. A compiled
    SmolLM2 decoded a step in 31 ms against 47 eager, and evaluated 1.1-2.2x the questions/s
    (benchmarks/engines.py; jmed's plugin keeps LoRA working compiled). The compiled kernels are
    cached per architecture (engine_env), so only the first start of an architecture on a machine
    pays the compile: 82-98 s for SmolLM2 here, then 35-45 s against 25-33 s eager."""
    return os.environ.get("JMED_VLLM_EAGER", "").strip() != "1"


def _lora_rank_bucket(r: int) -> int:
    for bucket in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= bucket:
            return bucket
    raise EngineError(f"LoRA rank {r} is above vLLM's largest (512)")


def _all_cores() -> str:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return ",".join(str(c) for c in cores)


def engine_env(lora: bool = False) -> dict:
    env = {
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB)),
        # vLLM binds its worker to all cores but one by default (the one kept for its API server):
        # half this 2-core machine. Bound to every core the worker ran 1.64 against 0.99 questions/s.
        "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", _all_cores()),
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore"),
    }
    if lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if not _on_gpu():
        # vLLM 0.32's own compile cache (AOT) cannot load what it saved on CPU ("'function' object has
        # no attribute 'finalize_loading'"): every start compiled anew, 92 s for SmolLM2 + LoRA. Without
        # it, inductor's cache serves later starts: 45 s. That cache lives with jmed's other derived
        # files ($JMED_CACHE/inductor), not in /tmp; always set, since importing torch in this process
        # puts its /tmp default into os.environ.
        from jmed.models import cache_root

        env["VLLM_USE_AOT_COMPILE"] = os.environ.get("VLLM_USE_AOT_COMPILE", "0")
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")
    return env


def start_vllm(
    model_dir,
    served_names: list[str] | None = None,
    log_path=None,
    lora_rank: int = 0,
    timeout: float = 900.0,
    port: int = 0,
    max_model_len: int = 0,
):
    """Start a vLLM server for `model_dir` and wait until it answers; returns (process, url, seconds).
    On CPU the model is compiled unless JMED_VLLM_EAGER=1 (compiled_on_cpu); a GPU always compiles.
    Stop it with jmed.server.stop_server (the whole process group: reaper, API server, engine core)."""
    from jmed import server

    port = port or server.free_port()
    names = served_names or [SERVED_NAME]
    cmd = vllm_command(str(model_dir), port, names, lora_rank=lora_rank, max_model_len=max_model_len)
    env = server.serve_env("", engine_env(lora=bool(lora_rank)))
    try:
        proc, seconds = server.start_process(
            cmd, env, port, "/health", log_path, timeout, f"vLLM engine for {model_dir}"
        )
    except (RuntimeError, TimeoutError) as exc:
        raise EngineError(f"vLLM could not serve model {model_dir}: {exc}{_log_reason(log_path)}") from exc
    return proc, f"http://127.0.0.1:{port}/v1", seconds


def _log_reason(log_path) -> str:
    """The last error line of the engine's log: why vLLM refused the model."""
    if not log_path or not Path(log_path).exists():
        return ""
    lines = [
        ln
        for ln in Path(log_path).read_text(errors="replace").splitlines()
        if "Error" in ln or "error" in ln or "Unsupported" in ln
    ]
    return f"; the engine said: {lines[-1].strip()[-400:]}" if lines else ""


# ---- one engine for a step ------------------------------------------------------------------------


class Opened:
    """An engine for one step and what it cost to get it (`load_s`); `close` stops what was started."""

    def __init__(self, engine, load_s: float, proc=None):
        self.engine, self.load_s, self.proc = engine, load_s, proc

    def close(self) -> None:
        if self.proc is not None:
            from jmed.server import stop_server

            stop_server(self.proc)
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_vllm(model_dir, tokenizer, url: str = "", log_path=None, max_model_len: int = 0) -> Opened:
    """A vLLM engine for `model_dir`: the server at `url` when given, else one started now."""
    t0 = time.perf_counter()
    if url:
        return Opened(VLLMEngine(url, tokenizer), time.perf_counter() - t0)
    proc, started_url, _ = start_vllm(model_dir, log_path=log_path, max_model_len=max_model_len)
    try:
        return Opened(VLLMEngine(started_url, tokenizer, SERVED_NAME), time.perf_counter() - t0, proc)
    except BaseException:
        from jmed.server import stop_server

        stop_server(proc)
        raise


def merged_dir(base_path, base_revision: str, adapter_dir) -> Path:
    """The base with the adapter merged in, saved once per (base revision, adapter bytes) under
    $JMED_CACHE/merged-<digest>: vLLM runs a merged copy at the base's speed, with no LoRA settings
    (compiled on CPU, runtime LoRA through jmed's plugin ran as fast: 7.18 against 7.20 questions/s,
    benchmarks/engines.py part 2)."""
    import hashlib

    from jmed import models

    h = hashlib.sha256(f"jmed-merged {base_revision}\n".encode())
    files = sorted(p for p in Path(adapter_dir).rglob("*") if p.is_file())
    h.update(models._hash_files(files, Path(adapter_dir)).encode())

    def build(out: Path) -> Path:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        models._quiet_transformers()
        net = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(net, str(adapter_dir)).merge_and_unload()
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(out)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
        return out

    return models._build_once(models.cache_root() / f"merged-{h.hexdigest()[:16]}", build)
