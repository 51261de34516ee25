"""jmed.train on the tiny model: the run contract, masking, determinism, resume, k-bit, bad input, CLI."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jmed import data, models
from jmed.config import DataFilter, TrainConfig, build, flat
from jmed.inference import encode
from jmed.train import TrainError, tokenize, train

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent  # the environment running the tests (make: .venv/bin)
QUICK = dict(max_steps=4, batch_size=4)
# tiny: 2 layers x (q 64->64, k 64->32, v 64->32, o 64->64) with r=8 -> 8*(128+96+96+128)*2
TINY_LORA_PARAMS = 7168


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _adapter_sha(run_id: str) -> str:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter/adapter_model.safetensors")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _only_run(status=None):
    runs = _client().search_runs(["0"])
    assert len(runs) == 1
    if status:
        assert runs[0].info.status == status
    return runs[0]


def test_masking_and_eos():
    _, tok, _ = models.load_base("tiny")
    q = data.load_questions(data.SAMPLE_TRAIN)[2]  # 901A3: two answers c,e
    examples, counts = tokenize([q], TrainConfig(), tok)
    e = examples[0]
    prompt_ids, target_ids = encode(*_render(q), tok)
    assert e.input_ids == prompt_ids + target_ids
    assert e.labels == [-100] * len(prompt_ids) + target_ids
    assert tok.convert_ids_to_tokens(target_ids) == ["c", ",", "e", "</s>"]
    assert prompt_ids[0] == tok.bos_token_id and prompt_ids.count(tok.bos_token_id) == 1
    assert counts == {
        "overlength_examples": 0,
        "dropped_examples": 0,
        "examples": 1,
        "overlength_median_tokens": 0,
        "overlength_max_tokens": 0,
    }


def _render(q, fmt="igakuqa"):
    from jmed.prompts import render

    r = render(q, fmt)
    return r.prompt, r.target


def test_overlength_policies():
    _, tok, _ = models.load_base("tiny")
    qs = data.load_questions(data.SAMPLE_TRAIN)
    lengths = [len(sum(encode(*_render(q), tok), [])) for q in qs]
    limit = sorted(lengths)[len(lengths) // 2]  # about half are longer
    n_over = sum(n > limit for n in lengths)
    excess = sorted(n - limit for n in lengths if n > limit)
    by = {"overlength_median_tokens": excess[len(excess) // 2], "overlength_max_tokens": max(lengths) - limit}
    ex, counts = tokenize(qs, TrainConfig(max_length=limit, overlength="truncate_prompt"), tok)
    assert counts == {"overlength_examples": n_over, "dropped_examples": 0, "examples": len(qs), **by}
    assert max(len(e.input_ids) for e in ex) == limit
    assert all(e.input_ids[0] == tok.bos_token_id for e in ex)
    ex, counts = tokenize(qs, TrainConfig(max_length=limit, overlength="drop"), tok)
    assert counts == {"overlength_examples": n_over, "dropped_examples": n_over, "examples": len(qs) - n_over, **by}
    with pytest.raises(TrainError, match=f"{n_over} example\\(s\\) longer than max_length={limit} tokens"):
        tokenize(qs, TrainConfig(max_length=limit, overlength="error"), tok)


def test_train_run_contract(tracking):
    import mlflow

    cfg = TrainConfig(eval_data=str(data.SAMPLE_TEST), checkpoint_every=2, **QUICK)
    run_id = train(cfg)
    run = _client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["jmed.step"] == "train"
    assert run.data.tags["jmed.base_model"] == "tiny"
    params = run.data.params
    for key, value in flat(cfg).items():
        assert params[key] == str(value), key
    items = data.load_training_items(str(data.SAMPLE_TRAIN))
    folder = models.tiny_model_dir()
    assert params["train_data_digest"] == data.digest(items)
    assert params["eval_data_digest"] == data.digest(data.load_questions(data.SAMPLE_TEST))
    assert params["base_revision"] == models.weights_hash(folder)
    assert params["tokenizer_hash"] == models.tokenizer_hash(folder)
    assert params["lora_targets"] == "q_proj,k_proj,v_proj,o_proj"
    assert params["trainable_params"] == str(TINY_LORA_PARAMS)
    assert params["train_examples"] == str(len(items)) and params["overlength_examples"] == "0"
    for pkg in ("jmed", "torch", "transformers", "peft", "bitsandbytes"):
        assert params[f"{pkg}_version"], pkg
    assert "git_commit" in params
    client = _client()
    for metric in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/peak_memory_mb"):
        assert [m.step for m in client.get_metric_history(run_id, metric)] == [1, 2, 3, 4], metric
    assert [m.step for m in client.get_metric_history(run_id, "eval/loss")] == [2, 4]
    lrs = [m.value for m in client.get_metric_history(run_id, "train/lr")]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # cosine to zero at max_steps
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert inputs == {"train": data.digest(items)[:36], "eval": params["eval_data_digest"][:36]}

    art = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter"))
    assert sorted(p.name for p in art.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "jmed.json",
    ]
    adapter_config = json.loads((art / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny"
    assert str(folder) not in (art / "adapter_config.json").read_text()
    assert sorted(adapter_config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    meta = json.loads((art / "jmed.json").read_text())
    assert {
        k: meta[k]
        for k in ("model", "base_revision", "prompt_format", "shots", "protocol", "train_run_id", "train_data_digest")
    } == {
        "model": "tiny",
        "base_revision": params["base_revision"],
        "prompt_format": "igakuqa",
        "shots": 0,
        "protocol": "letter",
        "train_run_id": run_id,
        "train_data_digest": data.digest(items),
    }
    assert meta["config"] == json.loads(json.dumps(flat(cfg)))
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"adapter", "plots", "checkpoints"} <= names
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/step-000002"]
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/loss_curve.png"]

    # the adapter loads onto the base and changes its output
    import torch

    base, tok, _ = models.load_base("tiny")
    ids = tok("問題", return_tensors="pt").input_ids
    before = base(ids).logits
    tuned = models.load_adapter(base, art)
    assert not tuned.training
    with torch.no_grad():
        assert not torch.equal(before, tuned(ids).logits)


def test_determinism_and_resume(tracking):
    cfg = TrainConfig(batch_size=4, max_steps=6)
    a = train(cfg)
    b = train(cfg)
    assert _adapter_sha(a) == _adapter_sha(b)
    other = train(TrainConfig(batch_size=4, max_steps=6, seed=7))
    assert _adapter_sha(other) != _adapter_sha(a)

    stopped = train(TrainConfig(batch_size=4, max_steps=6, checkpoint_every=2, stop_after=3))
    client = _client()
    run = client.get_run(stopped)
    assert run.data.tags["jmed.stopped_at"] == "3"
    assert sorted(a.path for a in client.list_artifacts(stopped, "checkpoints")) == [
        "checkpoints/step-000002",
        "checkpoints/step-000003",
    ]
    assert "adapter" not in {a.path for a in client.list_artifacts(stopped)}
    # an option that contradicts the run being continued is refused, not silently ignored
    with pytest.raises(TrainError, match=r"these options differ from them: lora_r=4 \(the run has 8\)"):
        train(TrainConfig(resume_from=stopped, lora_r=4))
    resumed = train(TrainConfig(resume_from=stopped, batch_size=4))  # the interrupted run's own config is used
    run = client.get_run(resumed)
    assert run.info.status == "FINISHED"
    assert run.data.tags["jmed.resumed_from"] == stopped
    assert run.data.params["resume_from"] == stopped and run.data.params["max_steps"] == "6"
    assert [m.step for m in client.get_metric_history(resumed, "train/loss")] == [4, 5, 6]
    assert _adapter_sha(resumed) == _adapter_sha(a)


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_kbit_training_on_cpu(tracking, quant):
    run_id = train(TrainConfig(quantization=quant, max_steps=2, batch_size=2))
    run = _client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["quantization"] == quant
    assert run.data.params["trainable_params"] == str(TINY_LORA_PARAMS)
    losses = _client().get_metric_history(run_id, "train/loss")
    assert len(losses) == 2 and all(0 < m.value < 20 for m in losses)
    assert len(_adapter_sha(run_id)) == 64


def test_empty_training_set_fails_the_run(tracking):
    with pytest.raises(TrainError, match="training set is empty after filters: .*train.jsonl holds 44 item"):
        train(TrainConfig(filters=DataFilter(years=(1999,))))
    run = _only_run("FAILED")
    assert run.data.tags["jmed.step"] == "train"


def test_unknown_target_module_fails_the_run(tracking):
    with pytest.raises(TrainError) as err:
        train(TrainConfig(target_modules="q_proj,attn_fused", **QUICK))
    assert str(err.value) == (
        "unknown target module(s) attn_fused for llama; available: down_proj, gate_proj, "
        "k_proj, o_proj, q_proj, up_proj, v_proj, all-linear, qkv"
    )
    _only_run("FAILED")


def test_overlength_error_fails_the_run(tracking):
    with pytest.raises(TrainError, match="longer than max_length=16 tokens"):
        train(TrainConfig(max_length=16, overlength="error", **QUICK))
    _only_run("FAILED")


def test_presets():
    cfg = build(TrainConfig, {"learning_rate": "1e-4"}, preset="jmedlora-7b")
    assert (
        cfg.lora_r,
        cfg.lora_alpha,
        cfg.lora_dropout,
        cfg.target_modules,
        cfg.learning_rate,
        cfg.batch_size,
        cfg.max_length,
        cfg.preset,
    ) == (8, 32, 0.05, "qkv", 1e-4, 8, 512, "jmedlora-7b")
    cfg = build(TrainConfig, {}, preset="jmedlora-70b")
    assert (cfg.quantization, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules, cfg.learning_rate) == (
        "4bit",
        64,
        16,
        0.1,
        "all-linear",
        2e-4,
    )
    with pytest.raises(ValueError, match="unknown preset 'jmedlora-13b'; available: jmedlora-70b, jmedlora-7b"):
        build(TrainConfig, {}, preset="jmedlora-13b")


def _env(tracking_uri: str) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}


def test_cli_unknown_preset_and_interrupt(tracking, tmp_path):
    env = _env(tracking)
    res = subprocess.run(
        [str(VENV_BIN / "jmed"), "train", "--preset", "nope"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1
    assert "Error: unknown preset 'nope'; available: jmedlora-70b, jmedlora-7b" in res.stderr
    # Ctrl-C during training: the run ends KILLED, never RUNNING.
    # Ctrl-C is delivered to the child whatever the runner did with SIGINT (a CI job started in the
    # background of a non-interactive shell ignores it, and children inherit that: seen here).
    proc = subprocess.Popen(
        [str(VENV_BIN / "jmed"), "train", "--max-steps", "100000", "--batch-size", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    client = _client()
    deadline = time.time() + 180
    while time.time() < deadline:
        runs = client.search_runs(["0"])
        if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
            break
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("training never logged a loss: " + proc.communicate()[1][-2000:])
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a training process behind
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert _only_run().info.status == "KILLED", err[-3000:]


@pytest.mark.slow
def test_mlflow_run_entry_point(tmp_path):
    """`mlflow run . -e train --env-manager local` with all defaults, then -P quantization=4bit."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _env(uri)
    res = subprocess.run(
        [str(VENV_BIN / "mlflow"), "run", str(ROOT), "-e", "train", "--env-manager", "local"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res4 = subprocess.run(
        [
            str(VENV_BIN / "mlflow"),
            "run",
            str(ROOT),
            "-e",
            "train",
            "--env-manager",
            "local",
            "-P",
            "quantization=4bit",
            "-P",
            "max_steps=3",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res4.returncode == 0, res4.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    runs = sorted(client.search_runs(["0"]), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    full, quant = runs
    assert full.data.params["max_steps"] == "60" and full.data.params["quantization"] == "none"
    assert quant.data.params["quantization"] == "4bit" and quant.data.params["max_steps"] == "3"
    losses = [m.value for m in client.get_metric_history(full.info.run_id, "train/loss")]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5  # the tiny model learns the answers
    for r in runs:
        assert "adapter" in {a.path for a in client.list_artifacts(r.info.run_id)}
    # a preset that does not exist: a clear error, and the run mlflow opened ends FAILED
    bad = subprocess.run(
        [
            str(VENV_BIN / "mlflow"),
            "run",
            str(ROOT),
            "-e",
            "train",
            "--env-manager",
            "local",
            "-P",
            "preset=jmedlora-13b",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "unknown preset 'jmedlora-13b'; available: jmedlora-70b, jmedlora-7b" in bad.stderr
    statuses = sorted(r.info.status for r in client.search_runs(["0"]))
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]


@pytest.mark.gpu
def test_cuda_bf16_autocast_and_4bit(tracking):
    import torch

    for quant in ("none", "4bit"):
        run_id = train(TrainConfig(quantization=quant, max_steps=3, batch_size=4))
        run = _client().get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["device"].startswith("cuda")
        assert run.data.params["dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
        assert run.data.metrics["train/peak_memory_mb"] > 0
        assert len(_adapter_sha(run_id)) == 64


def test_shots_chat_and_instruction_rendering():
    _, tok, _ = models.load_base("tiny")
    qs = data.load_questions(data.SAMPLE_TRAIN)[:3]
    ex, _ = tokenize(qs, TrainConfig(shots=1), tok)
    first_prompt = tok.decode(
        [t for t, lab in zip(ex[0].input_ids, ex[0].labels) if lab == -100], skip_special_tokens=True
    )
    assert qs[1].stem in first_prompt and qs[0].stem in first_prompt  # the next question is the shot
    assert first_prompt.index(qs[1].stem) < first_prompt.index(qs[0].stem)
    ex, _ = tokenize(qs[:1], TrainConfig(prompt_format="chat-igakuqa"), tok)
    assert tok.decode(ex[0].input_ids).startswith("<s><|user|>\n以下は医師国家試験の問題です。")
    records = data.load_instructions(data.SAMPLE_INSTRUCTIONS)
    ex, _ = tokenize(records[:1], TrainConfig(prompt_format="medpalm"), tok)
    target = [t for t, lab in zip(ex[0].input_ids, ex[0].labels) if lab != -100]
    assert tok.decode(target) == records[0].output + "</s>"


def test_instruction_data_text_protocol(tracking):
    import mlflow

    run_id = train(
        TrainConfig(train_data=str(data.SAMPLE_INSTRUCTIONS), prompt_format="alpaca_med", max_steps=2, batch_size=2)
    )
    meta = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter/jmed.json")).read_text()
    )
    assert (meta["prompt_format"], meta["protocol"]) == ("alpaca_med", "text")
    assert meta["train_data_digest"] == data.digest(data.load_instructions(data.SAMPLE_INSTRUCTIONS))


def test_resume_errors(tracking):
    plain = train(TrainConfig(max_steps=1, batch_size=2))
    with pytest.raises(TrainError, match=f"resume_from={plain}: that run has no checkpoints"):
        train(TrainConfig(resume_from=plain))
    with pytest.raises(TrainError, match="resume_from=0123456789abcdef: cannot read that run's checkpoints"):
        train(TrainConfig(resume_from="0123456789abcdef"))
    statuses = sorted(r.info.status for r in _client().search_runs(["0"]))
    assert statuses == ["FAILED", "FAILED", "FINISHED"]


def _checkpoints(run_id: str) -> list[str]:
    try:
        return sorted(e.path for e in _client().list_artifacts(run_id, "checkpoints") if e.is_dir)
    except Exception:  # noqa: BLE001 - the run's artifact folder does not exist yet
        return []


def test_resume_after_sigkill_anywhere_is_byte_identical(tracking, tmp_path, caplog):
    """kill -9 at random points of a checkpointing run (4 trials, the first with its newest checkpoint
    only partly uploaded): resuming takes the newest complete checkpoint and ends with the bytes of an
    uninterrupted run."""
    import random
    from urllib.parse import urlparse

    import mlflow

    from jmed.train import CHECKPOINT_DONE

    args = dict(batch_size=4, max_steps=8, checkpoint_every=1)
    want = _adapter_sha(train(TrainConfig(**args)))
    rng = random.Random(7)
    cli = [str(VENV_BIN / "jmed"), "train", "--batch-size", "4", "--max-steps", "8", "--checkpoint-every", "1"]
    for trial in range(4):
        before = {r.info.run_id for r in _client().search_runs(["0"])}
        proc = subprocess.Popen(
            cli, env=_env(tracking), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline, run_id, wanted = time.time() + 300, None, rng.randint(1, 6)
            while run_id is None or len(_checkpoints(run_id)) < wanted:
                assert proc.poll() is None and time.time() < deadline, "the training ended before the kill"
                new = {r.info.run_id for r in _client().search_runs(["0"])} - before
                run_id = next(iter(new), None)
                time.sleep(0.02)
            time.sleep(rng.random() * 0.3)  # anywhere: in a step, or while a checkpoint is uploaded
        finally:
            proc.kill()
            proc.wait(30)
        _client().set_terminated(run_id, "KILLED")  # what `kill -9` leaves RUNNING
        if trial == 0:  # the newest checkpoint as a kill during its upload leaves it
            newest = _checkpoints(run_id)[-1]
            folder = Path(urlparse(mlflow.get_run(run_id).info.artifact_uri).path) / newest
            (folder / CHECKPOINT_DONE).unlink(missing_ok=True)
            (folder / "trainer_state.json").unlink()
        caplog.clear()
        resumed = train(TrainConfig(resume_from=run_id))
        assert _adapter_sha(resumed) == want, trial
        if trial == 0:
            assert f"skipping incomplete checkpoint(s) {newest}" in caplog.text


def _descendants(pid: int) -> list[int]:
    """Live processes below `pid` (Linux /proc)."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.mark.slow
def test_sigterm_to_mlflow_run_ends_the_step_under_it_killed(tmp_path):
    """A scheduler's plain SIGTERM to `mlflow run -e train` (not to its process group): MLflow dies
    without passing it on; the `jmed train` below it sees its `mlflow run` gone, ends like Ctrl-C and
    its run is KILLED; no process is left."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.search_experiments()  # the store's schema made here, before the processes that poll or write it
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "run", str(ROOT), "-e", "train", "--env-manager", "local", "-P", "max_steps=100000"],
        env=_env(uri),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, so that only it is signalled, as a scheduler would
    )
    below: list[int] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            runs = client.search_runs(["0"])
            if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
                break
            time.sleep(1)
        else:
            pytest.fail("training never logged a loss: " + proc.stderr.read()[-2000:])
        below = _descendants(proc.pid)
        assert below, "no jmed process under mlflow run"
        started = {p: _start_time(p) for p in below}  # a pid reused by another process later is not one of them
        proc.send_signal(signal.SIGTERM)  # the mlflow run process only
        proc.wait(timeout=60)
        deadline = time.time() + 120

        def left():
            return [p for p in below if _alive(p) and _start_time(p) == started[p]]

        while time.time() < deadline and left():
            time.sleep(0.5)
        survivors = {p: _cmdline(p) for p in left()}
        assert not survivors, f"a process of the step outlived mlflow run: {survivors}"
        [run] = client.search_runs(["0"])
        assert run.info.status == "KILLED"
    finally:  # whatever happened, nothing of it is left running (re-parented processes included)
        for p in set(_descendants(proc.pid) + below + [proc.pid]):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start_time(pid: int) -> str:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:300]
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_length_grouped_order_is_a_seeded_permutation_sorted_within_groups():
    from jmed.train import GROUP_STEPS, batch_indices, epoch_order

    n, step_batch = 1000, 4
    lengths = [(i * 7919) % 1500 + 150 for i in range(n)]  # IgakuQA-like: 150 to 1,650 tokens
    plain, grouped = epoch_order(n, 42, 0), epoch_order(n, 42, 0, lengths, step_batch)
    assert sorted(grouped) == list(range(n)) and grouped == epoch_order(n, 42, 0, lengths, step_batch)
    size = step_batch * GROUP_STEPS
    for start in range(0, n, size):  # the same examples per group as the random order, longest first
        assert set(grouped[start : start + size]) == set(plain[start : start + size])
        assert [lengths[i] for i in grouped[start : start + size]] == sorted(
            (lengths[i] for i in plain[start : start + size]), reverse=True
        )
    assert epoch_order(n, 42, 1, lengths, step_batch) != grouped  # each epoch its own order
    # a position defines the batch: steps taken one by one (or resumed at any step) are the epoch order
    steps = [batch_indices(n, 42, step_batch, p, lengths) for p in range(0, 2 * n, step_batch)]
    assert [i for s in steps[: n // step_batch] for i in s] == grouped

    def padding(order):
        batches = [order[s : s + step_batch] for s in range(0, n, step_batch)]
        real = sum(lengths)
        return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padding(grouped) < padding(plain) / 4


def test_group_by_length_cuts_the_padding_share_it_logs(tracking):
    import mlflow

    shares = {}
    for group in (False, True):
        run = train(TrainConfig(max_steps=5, batch_size=4, group_by_length=group))
        got = mlflow.get_run(run).data
        shares[group] = got.metrics["data/padding_share"]
        assert got.params["group_by_length"] == str(group)
        assert got.params["precision_resolved"] == "fp32"  # tiny: too small for bf16 units
    assert 0 <= shares[True] < shares[False] < 1, shares


def test_answer_only_logits_give_the_loss_of_full_logits():
    """The training loss from logits at the answer-predicting positions only equals transformers' own
    causal-LM loss over full logits, with right padding and answers of different lengths and places."""
    import torch

    from jmed.inference import _forward_kwargs
    from jmed.train import answer_loss

    net, _, _ = models.load_base("tiny")
    assert _forward_kwargs(net)["keep"]
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (3, 20))
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 17:], labels[1, 10:13], labels[2, 12:15] = ids[0, 17:], ids[1, 10:13], ids[2, 12:15]
    full, kept = answer_loss(net, ids, mask, labels, False), answer_loss(net, ids, mask, labels, True)
    assert kept.item() == pytest.approx(full.item(), rel=1e-6)
    full.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    answer_loss(net, ids, mask, labels, True).backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, net.parameters()))
