"""jmed.models: the built-in tiny model, loading, precision, LoRA targets per architecture."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jmed import models

ROOT = Path(__file__).resolve().parent.parent

HASH_SCRIPT = """
import hashlib, sys
from jmed import models
d = models.tiny_model_dir()
for f in sorted(d.iterdir()):
    print(f.name, hashlib.sha256(f.read_bytes()).hexdigest())
"""


def _build_in(cache: Path, **env) -> subprocess.Popen:
    e = {**os.environ, "JMED_CACHE": str(cache), **env}
    return subprocess.Popen(
        [sys.executable, "-c", HASH_SCRIPT], env=e, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_tiny_build_is_deterministic_across_processes(tmp_path):
    # Separate caches, different hash seeds and thread counts: the same bytes.
    a = _build_in(tmp_path / "a", PYTHONHASHSEED="1", RAYON_NUM_THREADS="2")
    b = _build_in(tmp_path / "b", PYTHONHASHSEED="2")
    out_a, err_a = a.communicate(timeout=300)
    out_b, err_b = b.communicate(timeout=300)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    assert out_a == out_b
    names = [line.split()[0] for line in out_a.splitlines()]
    assert names == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


@pytest.mark.slow
def test_concurrent_builds_share_one_complete_folder(tmp_path):
    procs = [_build_in(tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert outs[0][0] == outs[1][0]
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 1 and folders[0].startswith("tiny-0.1.0-")  # no temp folder left behind


def test_tiny_cache_folder_name(tmp_path, monkeypatch):
    monkeypatch.setenv("JMED_CACHE", str(tmp_path))
    assert models.cache_root() == tmp_path
    assert models.tiny_model_dir().parent == tmp_path
    assert models.tiny_model_dir().name == f"tiny-0.1.0-{models.tiny_key()}"


@pytest.fixture(scope="module")
def tiny():
    return models.load_base("tiny")


def test_load_tiny_info(tiny):
    net, tok, info = tiny
    folder = models.tiny_model_dir()
    assert info["model"] == "tiny"
    assert info["slug"] == "tiny"
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["revision"] == models.weights_hash(folder)
    assert info["revision"].startswith("sha256:") and len(info["revision"]) == 7 + 64
    expected = hashlib.sha256()
    for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json"):
        expected.update(name.encode() + b"\0" + (folder / name).read_bytes())
    assert info["tokenizer_hash"] == expected.hexdigest()
    assert (net.config.num_hidden_layers, net.config.hidden_size) == (2, 64)
    assert (info["device"], info["dtype"], info["quantization"]) == ("cpu", "float32", "none")


def test_tiny_tokenizer_covers_letters_digits_and_templates(tiny):
    from jmed import prompts

    _, tok, _ = tiny
    unk = tok.unk_token_id
    for letter in "abcdefghij":
        assert tok(letter, add_special_tokens=False).input_ids == [tok.convert_tokens_to_ids(letter)]
    ids = tok("a,c,e", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["a", ",", "c", ",", "e"]
    for fmt in prompts.BASE_FORMATS:
        text = (
            prompts.render_prompt(
                "急性心筋梗塞で上昇するのはどれか。", ["トロポニンT", "CK-MB", "AST", "LDH", "ALP"], fmt, 2
            )
            + "0123456789"
        )
        ids = tok(text).input_ids
        assert unk not in ids
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text  # lossless
    rare = "齲蝕と鬱病"  # characters outside the corpus: byte fallback, never <unk>
    ids = tok(rare, add_special_tokens=False).input_ids
    assert unk not in ids and tok.decode(ids) == rare
    assert (
        tok.apply_chat_template([{"role": "user", "content": "質問"}], tokenize=False, add_generation_prompt=True)
        == "<|user|>\n質問\n<|assistant|>\n"
    )


def test_local_folder_and_revision(tiny, tmp_path):
    net, tok, _ = tiny
    net.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    _, _, info = models.load_base(str(tmp_path / "m"))
    assert info["model"] == str(tmp_path / "m")
    expected = hashlib.sha256(b"model.safetensors\0" + (tmp_path / "m" / "model.safetensors").read_bytes())
    assert info["revision"] == "sha256:" + expected.hexdigest()


def test_offline_uncached_hub_id_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError) as err:
        models.load_base("nobody-org/not-a-cached-model-xyz")
    assert "nobody-org/not-a-cached-model-xyz" in str(err.value)
    assert "HF_HUB_OFFLINE=1" in str(err.value)
    with pytest.raises(models.ModelError, match="no config.json"):
        models.load_base(str(tmp_path))


def test_resolve_precision_cpu(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU expectations")
    monkeypatch.setattr(models, "cpu_bf16_units", lambda: "")  # an AVX2-only CPU: bf16 would be emulated
    assert models.precision_choice("auto", 576) == (
        "cpu",
        torch.float32,
        "auto: this CPU has no bf16 matrix units (AMX, AVX-512 BF16)",
    )
    monkeypatch.setattr(models, "cpu_bf16_units", lambda: "amx_bf16")
    assert models.precision_choice("auto", 576) == ("cpu", torch.bfloat16, "auto: the CPU has amx_bf16")
    assert models.precision_choice("auto", 64) == (
        "cpu",
        torch.float32,
        "auto: hidden size 64 < 256, too small to gain from amx_bf16",
    )
    assert models.precision_choice("fp32", 576) == ("cpu", torch.float32, "fp32: as asked")
    assert models.resolve_precision("bf16") == ("cpu", torch.bfloat16)
    assert models.resolve_precision("auto", 64) == ("cpu", torch.float32)
    assert models.resolve_precision("fp16") == ("cpu", torch.float16)
    with pytest.raises(models.ModelError, match="unknown precision 'fp8'"):
        models.resolve_precision("fp8")


@pytest.mark.gpu
def test_resolve_precision_cuda():
    import torch

    device, dtype = models.resolve_precision("auto")
    assert device == "cuda" and dtype in (torch.bfloat16, torch.float16)


def _tiny_random(kind: str):
    import transformers

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    if kind == "gpt_neox":
        config = transformers.GPTNeoXConfig(**common)
        return transformers.GPTNeoXForCausalLM(config)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[kind]
    return model_cls(config_cls(num_key_value_heads=2, **common))


@pytest.mark.parametrize(
    "kind,targets,qkv",
    [
        ("llama", ["q_proj", "k_proj", "v_proj", "o_proj"], ["q_proj", "k_proj", "v_proj"]),
        ("qwen2", ["q_proj", "k_proj", "v_proj", "o_proj"], ["q_proj", "k_proj", "v_proj"]),
        ("mistral", ["q_proj", "k_proj", "v_proj", "o_proj"], ["q_proj", "k_proj", "v_proj"]),
        ("gpt_neox", ["query_key_value", "dense"], ["query_key_value"]),
    ],
)
def test_default_targets_per_architecture(kind, targets, qkv):
    from peft import LoraConfig, get_peft_model

    net = _tiny_random(kind)
    assert models.default_target_modules(net) == targets
    assert models.resolve_target_modules(net, "") == targets
    assert models.resolve_target_modules(net, "qkv") == qkv
    peft_model = get_peft_model(net, LoraConfig(r=2, lora_alpha=4, target_modules=targets, task_type="CAUSAL_LM"))
    wrapped = sorted({n.split(".")[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")})
    assert wrapped == sorted(targets)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # r=2: each wrapped Linear(in, out) adds 2*(in + out) parameters, one layer.
    expected = sum(
        2 * (m.in_features + m.out_features)
        for n, m in net.named_modules()
        if n.split(".")[-1] in targets and hasattr(m, "in_features") and "lora" not in n
    )
    assert trainable == expected


def test_unknown_target_module_lists_available():
    net = _tiny_random("gpt_neox")
    with pytest.raises(models.ModelError) as err:
        models.resolve_target_modules(net, "q_proj,dense")
    assert str(err.value) == (
        "unknown target module(s) q_proj for gpt_neox; available: dense, dense_4h_to_h, "
        "dense_h_to_4h, query_key_value, all-linear, qkv"
    )
    assert models.resolve_target_modules(net, "all-linear") == "all-linear"


@pytest.mark.parametrize("quant,layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_tiny_loads_on_cpu(quant, layer):
    net, _, info = models.load_base("tiny", quantization=quant)
    kinds = {type(m).__name__ for m in net.modules()}
    assert layer in kinds
    assert info["quantization"] == quant
    if quant == "4bit":
        q = net.config.quantization_config
        q = q if isinstance(q, dict) else q.to_dict()
        assert (q["bnb_4bit_quant_type"], q["bnb_4bit_use_double_quant"]) == ("nf4", True)


@pytest.mark.slow
def test_hub_id_from_the_local_cache_records_the_commit(tmp_path):
    """A hub id resolves offline from the Hugging Face cache; its snapshot commit is the revision."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--jmed-test--tiny-copy"
    snap = repo / "snapshots" / commit
    shutil.copytree(models.tiny_model_dir(), snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = (
        "import json; from jmed import models; net, tok, info = models.load_base('jmed-test/tiny-copy'); "
        "print(json.dumps(info))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert (info["model"], info["revision"], info["slug"]) == ("jmed-test/tiny-copy", commit, "jmed-test--tiny-copy")
    assert info["tokenizer_hash"] == models.tokenizer_hash(models.tiny_model_dir())


def test_cpu_bf16_units_are_read_from_cpuinfo_and_can_be_switched_off(monkeypatch):
    import builtins
    import io

    real_open = builtins.open

    def fake(flags):
        return lambda path, *a, **k: (
            io.StringIO(f"processor: 0\nflags\t\t: {flags}\n") if path == "/proc/cpuinfo" else real_open(path, *a, **k)
        )

    monkeypatch.setattr(builtins, "open", fake("fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16"))
    assert models.cpu_bf16_units() == "amx_bf16"
    monkeypatch.setattr(builtins, "open", fake("fpu sse avx2 avx512f avx512_bf16"))
    assert models.cpu_bf16_units() == "avx512_bf16"
    monkeypatch.setattr(builtins, "open", fake("fpu sse avx2"))
    assert models.cpu_bf16_units() == ""
    monkeypatch.setattr(builtins, "open", fake("avx512_bf16 amx_bf16"))
    monkeypatch.setenv("JMED_CPU_BF16", "0")
    assert models.cpu_bf16_units() == ""
