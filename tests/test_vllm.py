"""The vllm engine, for real: vLLM's CPU build in .venv-vllm (make install), started by jmed.

Bounded: one SmolLM2 engine for the agreement tests, two tiny engines for the pipeline, one server for
the OpenAI API tests; the kill tests stop the engine while it starts. Every start compiles, as jmed runs
vLLM on CPU: the first start of an architecture on a machine 80-100 s here, a later one 40-45 s (the
compile cached in $JMED_CACHE/inductor).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import private_store

pytestmark = pytest.mark.slow
JMED = [sys.executable, "-m", "jmed"]


def _require_engine():
    from jmed.engine import EngineError, vllm_python

    try:
        vllm_python()
    except EngineError as exc:
        if os.environ.get("JMED_REQUIRE_SHARED") == "1":
            pytest.fail(f"{exc} (CI installs it with make install)")
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def engine_installed():
    _require_engine()


def reapers(parent: int | None = None) -> list[int]:
    """Live jmed.reaper processes (the group leaders of vLLM engines), optionally of one parent."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if b"jmed.reaper" in cmd and fields[0] != "Z" and (parent is None or int(fields[1]) == parent):
            out.append(int(stat.parent.name))
    return out


def wait_gone(pgid: int, timeout: float = 30.0) -> bool:
    from jmed.server import group_alive

    deadline = time.time() + timeout
    while time.time() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.2)
    return False


# ---- the same picks as the hf engine (SmolLM2, 16 bundled questions) --------------------------------


@pytest.fixture(scope="module")
def smollm2_both():
    """hf and vllm results on the same 16 questions, one engine start."""
    from jmed import data as D
    from jmed import models
    from jmed.engine import open_vllm
    from jmed.evaluate import run_questions

    cases = {
        "letter": ("letter", "igakuqa"),
        "loglik": ("loglik", "igakuqa"),
        "text": ("text", "medpalm"),
        "loglik-text": ("loglik", "medpalm"),
    }
    qs = [q for q in D.load_questions(str(D.SAMPLE_TEST)) if not q.numeric][:16]
    assert len(qs) == 16
    net, tok, info = models.load_base("smollm2-135m")
    hf = {k: run_questions(net, tok, qs, p, f, 0, "lenient", 8, 0, desc=None) for k, (p, f) in cases.items()}
    del net
    with open_vllm(info["path"], tok) as opened:
        vl = {
            k: run_questions(opened.engine, tok, qs, p, f, 0, "lenient", 8, 0, desc=None) for k, (p, f) in cases.items()
        }
        pgid, args = opened.proc.pid, opened.proc.args
    assert wait_gone(pgid), "the engine outlived the step"
    # the evaluation ran compiled (jmed's default on CPU), the answers below are the compiled model's
    assert "--enable-lora" not in args and "--enforce-eager" not in args, args
    return qs, hf, vl


def agreement(a: dict, b: dict) -> int:
    return sum(x["parsed"] == y["parsed"] for x, y in zip(a["rows"], b["rows"]))


# Tolerances, measured here (2026-12-02): vLLM runs bfloat16, jmed's hf engine float32. bf16 logits of
# magnitude ~20 are spaced 0.125 apart, so close letters can tie or swap (2 of 16 in loglik), and a
# babbling base model's greedy text diverges after the first differing token (letter: 1 of 16).
@pytest.mark.parametrize("case, at_least", [("letter", 13), ("loglik", 13), ("loglik-text", 14)])
def test_vllm_picks_agree_with_hf(smollm2_both, case, at_least):
    qs, hf, vl = smollm2_both
    assert agreement(hf[case], vl[case]) >= at_least, [
        (x["parsed"], y["parsed"]) for x, y in zip(hf[case]["rows"], vl[case]["rows"])
    ]
    assert vl[case]["metrics"]["eval/questions"] == 16
    if case.startswith("loglik"):  # a score for every choice of every question
        assert all(len(r["output"].split()) == len(q.choices) for r, q in zip(vl[case]["rows"], qs))


def test_text_protocol_metrics_are_computed_from_vllm_outputs(smollm2_both):
    from jmed import metrics as M

    qs, _, vl = smollm2_both
    res = vl["text"]
    responses = {r["id"]: r["output"] for r in res["rows"]}
    text = M.text_summary(qs, responses, "last-block")
    assert res["metrics"]["eval/exact_match"] == pytest.approx(text["exact_match"])
    assert res["metrics"]["eval/gestalt"] == pytest.approx(text["gestalt"])
    assert any(r["output"] for r in res["rows"])  # it generated text
    assert res["metrics"]["eval/max_new_tokens"] > 16  # the text budget (longest answer + margin), not letters'


# ---- the pipeline with engine=vllm (tiny: head_dim 32) ---------------------------------------------


def test_main_pipeline_runs_with_the_vllm_engine(tmp_path):
    import mlflow

    from jmed.models import cpu_bf16_units

    with private_store(tmp_path) as uri:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        proc = subprocess.run(
            JMED + ["pipeline", "--model", "tiny", "--max-steps", "20", "--engine", "vllm"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        evals = mlflow.search_runs(
            search_all_experiments=True, filter_string="tags.`jmed.step` = 'evaluate'", output_format="list"
        )
        assert len(evals) == 2  # the base and the adapter
        for run in evals:
            assert run.info.status == "FINISHED"
            assert run.data.params["engine"] == "vllm" and run.data.params["quantization"] == "none"
            # the dtype vLLM ran: bf16 only where the CPU has bf16 units (emulated, and slower, elsewhere)
            assert run.data.params["precision_resolved"] == ("bf16" if cpu_bf16_units() else "fp32")
            assert run.data.metrics["eval/questions_per_s"] > 0 and run.data.metrics["eval/load_s"] > 0
        v = mlflow.MlflowClient().get_model_version_by_alias("jmed-tiny", "champion")
        assert v.tags["jmed.engine"] == "vllm" and len(v.tags["jmed.adapter_sha256"]) == 64
    assert not reapers(), "an engine outlived the pipeline"


# ---- no engine outlives its step --------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_engine_outlives_a_stopped_or_killed_evaluate(tmp_path, sig):
    import mlflow

    with private_store(tmp_path) as uri:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        proc = subprocess.Popen(
            JMED + ["evaluate", "--model", "tiny", "--engine", "vllm"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 120
        while not reapers(proc.pid) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        [reaper] = reapers(proc.pid)
        time.sleep(3)  # vLLM's API server is importing and about to start its engine core
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert wait_gone(reaper), f"the engine's processes outlived {sig.name} of evaluate"
        [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
        if sig == signal.SIGTERM:  # ended like Ctrl-C: the run is marked, not left RUNNING
            assert run.info.status in ("KILLED", "FAILED")
        else:  # nothing in a SIGKILLed process runs: its run stays RUNNING; a user ends it, as we do here
            assert run.info.status == "RUNNING"
            mlflow.MlflowClient().set_terminated(run.info.run_id, "KILLED")


def test_an_unservable_model_is_named_with_the_reason(tmp_path, tracking):
    """A model vLLM refuses: a clear error naming the model and vLLM's reason, no traceback, no engine."""
    from jmed.models import build_tiny

    folder = tmp_path / "odd"
    build_tiny(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_size=48, num_attention_heads=3, num_key_value_heads=1, head_dim=16)  # head_dim 16
    (folder / "config.json").write_text(json.dumps(cfg))
    proc = subprocess.run(
        JMED + ["evaluate", "--model", str(folder), "--engine", "vllm", "--limit", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(folder) in proc.stderr and "vLLM could not serve model" in proc.stderr
    assert not reapers()


# ---- serving the champion through vLLM's OpenAI API --------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """jmed-tiny v1 (adapter A, 1 step) champion; adapter B (30 steps) trained and evaluated, not promoted."""
    from jmed.config import EvalConfig, TrainConfig
    from jmed.data import SAMPLE_TRAIN
    from jmed.evaluate import evaluate
    from jmed.registry import promote
    from jmed.train import train

    root = tmp_path_factory.mktemp("vllm-serve")
    with private_store(root) as uri:
        train_a = train(TrainConfig(max_steps=1, learning_rate=1e-2))
        evaluate(EvalConfig(adapter=train_a, eval_data=str(SAMPLE_TRAIN), compare_base=False, max_new_tokens=4))
        [rec] = promote("tiny")
        assert rec["champion_version"] == "1"
        train_b = train(TrainConfig(max_steps=30, learning_rate=1e-2))
        yield root, uri, train_b


def test_served_champion_answers_openai_clients_and_follows_an_alias_move(registry):
    import requests
    from openai import NotFoundError, OpenAI

    from jmed.config import EvalConfig
    from jmed.data import SAMPLE_TRAIN
    from jmed.evaluate import evaluate
    from jmed.registry import promote
    from jmed.server import free_port

    root, uri, train_b = registry
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen(
        JMED
        + [
            "serve",
            "--engine",
            "vllm",
            "--model-uri",
            "models:/jmed-tiny@champion",
            "--port",
            str(port),
            "--poll-seconds",
            "1",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, (root / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        client = OpenAI(base_url=f"{base}/v1", api_key="none")
        names = {m.id for m in client.models.list().data}
        assert {"tiny", "jmed-tiny@champion", "jmed-tiny/1"} <= names

        c = client.completions.create(
            model="jmed-tiny@champion", prompt="問題: 発熱の原因は", max_tokens=4, temperature=0
        )
        assert c.model == "jmed-tiny@champion" and c.choices[0].finish_reason in ("length", "stop")
        chat = client.chat.completions.create(
            model="jmed-tiny/1",
            max_tokens=4,
            temperature=0,
            messages=[{"role": "user", "content": "正しいのはどれか。"}],
        )
        assert chat.choices[0].message.content is not None
        first = client.completions.create(model="models:/jmed-tiny/1", prompt="問題", max_tokens=3, temperature=0)
        assert (
            first.choices[0].text
            == client.completions.create(model="jmed-tiny@champion", prompt="問題", max_tokens=3, temperature=0)
            .choices[0]
            .text
        )

        # 4xx that name the problem
        with pytest.raises(NotFoundError, match="jmed-tiny@champion"):
            client.completions.create(model="jmed-other@champion", prompt="x", max_tokens=1)
        r = requests.post(f"{base}/v1/completions", data=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
        r = requests.post(f"{base}/v1/completions", json={"model": "jmed-tiny/99", "prompt": "x"})
        assert r.status_code == 404 and "not registered" in r.json()["error"]["message"]
        r = requests.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "発熱" * 3000, "max_tokens": 1})
        assert 400 <= r.status_code < 500, r.text

        # promote moves @champion to v2: served without a restart
        evaluate(EvalConfig(adapter=train_b, eval_data=str(SAMPLE_TRAIN), compare_base=False, max_new_tokens=4))
        [rec] = promote("tiny")
        assert rec["champion_version"] == "2"
        time.sleep(1.5)
        moved = client.completions.create(model="jmed-tiny@champion", prompt="問題", max_tokens=3, temperature=0)
        assert moved.model == "jmed-tiny@champion"
        assert "jmed-tiny/2" in {m.id for m in client.models.list().data}
        assert "moved: version 2" in (root / "serve.log").read_text()

        # the served LoRA is the adapter itself: v2, loaded into the running (compiled) engine, gives the
        # next-token log-probabilities of transformers + peft in float32 (top 8, to bf16's tolerance),
        # and they differ from the base model's by more than that
        ids = [1, 2, 3, 4, 5, 6, 7, 8]
        served = next_token_logprobs(base, "jmed-tiny/2", ids)
        want, plain = hf_next_token_logprobs(uri, train_b, ids)
        gap = max(abs(v - float(want[t])) for t, v in served.items())
        effect = max(abs(v - float(plain[t])) for t, v in served.items())
        assert gap < 0.1 < effect, (gap, effect, served)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
    assert not reapers(), "the engine outlived jmed serve"


def test_vllm_compiles_on_cpu_unless_told_and_keeps_the_compile_in_jmeds_cache(monkeypatch, tmp_path):
    """On CPU every vLLM start is compiled (a compiled SmolLM2 evaluated 1.1-2.2x the questions/s of an
    eager one; jmed's plugin keeps LoRA working compiled) unless JMED_VLLM_EAGER=1. vLLM's own compile
    cache (AOT) cannot load on CPU, so it is off there and inductor's cache, in $JMED_CACHE/inductor,
    serves later starts. A GPU keeps vLLM's defaults."""
    from jmed import engine as E

    monkeypatch.setattr(E, "_on_gpu", lambda: False)
    monkeypatch.delenv("JMED_VLLM_ARGS", raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_x")  # what importing torch puts there
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    monkeypatch.setenv("JMED_CACHE", str(tmp_path))
    eager = {}
    for env in ("", "1", "0"):
        monkeypatch.setenv("JMED_VLLM_EAGER", env)
        eager[env] = "--enforce-eager" in E.vllm_command("m", 1, ["m"])
    assert eager == {"": False, "1": True, "0": False}
    env = E.engine_env()
    assert env["VLLM_USE_AOT_COMPILE"] == "0" and env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setattr(E, "_on_gpu", lambda: True)
    assert "VLLM_USE_AOT_COMPILE" not in E.engine_env() and "TORCHINDUCTOR_CACHE_DIR" not in E.engine_env()


def next_token_logprobs(base: str, model: str, ids: list[int]) -> dict[int, float]:
    """The served top-8 next-token log-probabilities after the token ids `ids`, by token id."""
    import requests

    body = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 8}
    r = requests.post(f"{base}/v1/completions", json={**body, "return_tokens_as_token_ids": True}, timeout=120)
    assert r.status_code == 200, r.text
    top = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    return {int(k.removeprefix("token_id:")): v for k, v in top.items()}


def hf_next_token_logprobs(uri: str, train_run: str, ids: list[int]):
    """(with the train run's adapter, without it): next-token log-probabilities from transformers, fp32."""
    import mlflow
    import torch

    from jmed import models

    mlflow.set_tracking_uri(uri)
    adapter_dir = mlflow.artifacts.download_artifacts(f"runs:/{train_run}/adapter")
    net, _, _ = models.load_base("tiny", precision="fp32")
    with torch.no_grad():
        plain = torch.log_softmax(net(torch.tensor([ids])).logits[0, -1].float(), -1)
        tuned = models.load_adapter(net, Path(adapter_dir))
        lora = torch.log_softmax(tuned(torch.tensor([ids])).logits[0, -1].float(), -1)
    return lora, plain


def test_a_registered_adapter_edited_after_registration_is_refused(registry):
    """A version whose adapter bytes changed in the artifact store since registration: 409, not served."""
    import mlflow

    from jmed.llm_serve import Adapters, Refused

    root, uri, _ = registry
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    v = client.get_model_version("jmed-tiny", "1")
    assert len(v.tags["jmed.adapter_sha256"]) == 64
    src = Path(mlflow.artifacts.download_artifacts("models:/jmed-tiny/1", dst_path=str(root / "dl")))
    card = json.loads((src / "artifacts" / "adapter" / "jmed.json").read_text())
    stored = Path(client.get_model_version_download_uri("jmed-tiny", "1").removeprefix("file://"))
    stored = stored / "artifacts" / "adapter" / "adapter_config.json"
    cfg = json.loads(stored.read_text())
    cfg["lora_alpha"] = cfg["lora_alpha"] * 100
    stored.write_text(json.dumps(cfg))
    # upstream port 9 (discard) is never called: the check comes before vLLM is asked to load it
    adapters = Adapters("jmed-tiny", "tiny", card["base_revision"], "http://127.0.0.1:9", poll_s=1)
    with pytest.raises(Refused) as err:
        adapters.ensure("1")
    assert err.value.status == 409 and "changed after registration" in err.value.message


# ---- jmed's vLLM plugin: runtime LoRA on CPU without a weight copy per token ------------------------

LORA_OPS_CHECK = r"""
import json, torch
from vllm.lora.ops.torch_ops import lora_ops as V
theirs = {op: getattr(V, op) for op in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice",
                                        "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")}
from vllm.plugins import load_general_plugins
load_general_plugins()  # what each vLLM process does before it loads a model
import jmed_vllm_plugin as P
import vllm.lora.punica_wrapper.punica_cpu as C
loaded = all(getattr(V, op) is getattr(P, op) and getattr(C, op) is getattr(P, op) for op in theirs)
torch.manual_seed(0)
L, I, R, O = 4, 48, 8, 40
A, B = torch.randn(L, 1, R, I), torch.randn(L, 1, O, R)
A[-1], B[-1] = 0, 0  # vLLM's torch ops read the last slot for -1 (no LoRA): empty here, so both add nothing
diffs = {}
def check(name, op, make_out, *args):
    a, b = make_out(), None
    b = a.clone()
    theirs[op](*args[:2], a, *args[2:])
    getattr(P, op)(*args[:2], b, *args[2:])
    diffs[name] = float((a - b).abs().max())
cases = (("one adapter", [5, 7, 3], [1, 1, 1]), ("mixed", [5, 7, 3], [0, 2, -1]), ("untrained", [4, 4], [3, 3]))
for label, seq, idx in cases:  # untrained: a layer the adapter leaves alone holds zeros
    seq, idx = torch.tensor(seq), torch.tensor(idx)
    T, start = int(seq.sum()), torch.cumsum(seq, 0) - seq
    x, h, y = torch.randn(T, I), torch.randn(T, R), torch.randn(T, 3 * O)
    meta = (start, seq, idx, len(seq), int(seq.max()), T)
    check(f"sgmv_shrink {label}", "sgmv_shrink", lambda: torch.zeros(T, R), x, A, *meta, 0.5)
    for add in (True, False):
        check(f"sgmv_expand {label} add={add}", "sgmv_expand", lambda: y[:, :O].clone(), h, B, *meta, add)
        check(f"sgmv_expand_slice {label} add={add}", "sgmv_expand_slice", lambda: y.clone(), h, B, *meta, O, O, add)
    tok = torch.repeat_interleave(idx, seq)  # decode: one index per token
    check(f"bgmv_shrink {label}", "bgmv_shrink", lambda: torch.zeros(T, R), x, A, tok, 0.5)
    check(f"bgmv_expand {label}", "bgmv_expand", lambda: y[:, :O].clone(), h, B, tok, True)
    check(f"bgmv_expand_slice {label}", "bgmv_expand_slice", lambda: y.clone(), h, B, tok, 2 * O, O, True)
# the fused layer product (PunicaWrapperCPU.add_lora_linear): q/k/v-like slices, one of them left at zero
from vllm.lora.model_manager import LoRAModelManager
fused_on = C.PunicaWrapperCPU.add_lora_linear is P.add_lora_linear and LoRAModelManager.activate_adapter._jmed
class Wrapper:  # what update_metadata leaves on vLLM's wrapper: the step's plan
    pass
widths = (O, O // 2, O // 2)
As = tuple(torch.randn(L, 1, R, I) for _ in widths)
Bs = tuple(torch.randn(L, 1, w, R) for w in widths)
for t in As + Bs:
    t[-1] = 0
As[1][2], Bs[1][2] = 0, 0  # adapter 2 leaves the middle slice alone
def reference(y, x, tok, scale):
    at = 0
    for a, b, w in zip(As, Bs, widths):
        h = torch.zeros(x.shape[0], R)
        theirs["bgmv_shrink"](x, a, h, tok, scale)
        theirs["bgmv_expand_slice"](h, b, y, tok, at, w, True)
        at += w
    return y
def ours(y, x, tok, scale):
    w = Wrapper()
    w._jmed_plan = P.step_plan(tok)
    P.add_lora_linear(w, y, x, As, Bs, scale, widths)
    return y
for label, tok in (("one adapter", [1] * 6), ("mixed", [0, 2, -1, 2, 0, 1]), ("zero slice", [2, 2]),
                   ("no lora", [-1, -1]), ("decode", [3])):
    tok = torch.tensor(tok)
    x, y = torch.randn(len(tok), I), torch.randn(len(tok), 2 * O)
    want = reference(y.clone(), x, tok, 0.5)  # relative: one fused sum adds in another order (values ~1e2)
    diffs[f"add_lora_linear {label}"] = float((want - ours(y.clone(), x, tok, 0.5)).abs().max() / want.abs().max())
# the fused copies follow an adapter change (activate_adapter writes the slot, then returns True) and
# survive a call that changes nothing (an active adapter activated again returns False)
tok, x, y = torch.tensor([1, 1]), torch.randn(2, I), torch.randn(2, 2 * O)
ours(y.clone(), x, tok, 1.0)
P._bump(lambda: False)()
kept = len(P._FUSED) > 0
As[0][1] *= 2
P._bump(lambda: True)()
want = reference(y.clone(), x, tok, 1.0)
diffs["add_lora_linear after a change"] = float((want - ours(y.clone(), x, tok, 1.0)).abs().max() / want.abs().max())
print(json.dumps({"loaded": loaded, "fused": bool(fused_on), "kept": kept, "diffs": diffs}))
"""


def test_jmed_lora_ops_are_loaded_by_vllm_and_equal_its_own():
    """vLLM loads jmed's plugin (entry point vllm.general_plugins, installed by make install) in place of
    its CPU LoRA ops, and the plugin's ops give vLLM's own results (float32, to 1e-5; the fused product
    relative to the largest value): one adapter and
    several in one batch, prefill (sgmv) and decode (bgmv), shrink, expand set or added, the sliced
    expand of fused projections; a request without LoRA and a layer the adapter leaves at zero add nothing;
    and the fused layer product (add_lora_linear: the step's adapters found once, a layer's slices in two
    matmuls, cached until an adapter changes) equals vLLM's per-slice ops. Served answers through it are
    checked by the OpenAI test above; speed by benchmarks/engines.py."""
    from jmed.engine import vllm_python

    out = subprocess.run(
        [vllm_python(), "-c", LORA_OPS_CHECK], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] is True
    assert got["fused"] is True
    assert got["kept"] is True  # an activate that changes nothing keeps the fused copies
    assert len(got["diffs"]) == 30
    assert all(d < 1e-5 for d in got["diffs"].values()), got["diffs"]
