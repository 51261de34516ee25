"""The served model: input checks, then a real `mlflow models serve` process answering HTTP requests."""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import private_store

from jmed.contract import check_inputs, check_params

Q = {"question": "どれか。", "choices": ["甲", "乙", "丙"]}

BAD = [
    ("missing choices", [{"question": "どれか。"}], "missing input field(s): choices"),
    ("empty choices", [{**Q, "choices": []}], "record 0: 'choices' is empty"),
    ("non-string choice", [{**Q, "choices": ["甲", 2]}], "record 0: choices[1] must be a string, got int"),
    ("choices not a list", [{**Q, "choices": "甲乙"}], "'choices' must be a list of strings, got str"),
    ("27 choices", [{**Q, "choices": [str(i) for i in range(27)]}], "'choices' has 27 entries; at most 26"),
    ("long stem", [{**Q, "question": "x" * 20001}], "'question' has 20001 characters; at most 20000"),
    ("long choice", [{**Q, "choices": ["甲", "y" * 20001]}], "choices[1] has 20001 characters; at most 20000"),
    ("question not a string", [{**Q, "question": 5}], "'question' must be a string, got int"),
    ("empty question", [{**Q, "question": "  "}], "'question' is empty"),
    ("n_answers not int", [{**Q, "n_answers": "two"}], "'n_answers' must be an integer"),
    ("n_answers too big", [{**Q, "n_answers": 4}], "'n_answers' is 4; must be between 1 and the 3 choices"),
    ("unknown field", [{**Q, "answer": "a"}], "unknown input field(s): answer"),
    ("second record", [Q, {**Q, "choices": []}], "record 1: 'choices' is empty"),
    ("no rows", [], "no questions in the input"),
]


@pytest.mark.parametrize("name,records,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_are_rejected_with_a_named_problem(name, records, message):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        check_inputs(pd.DataFrame(records) if records else pd.DataFrame(columns=["question", "choices"]))
    assert message in err.value.message
    assert err.value.get_http_status_code() == 400


def test_good_inputs_and_default_answer_count():
    rows = check_inputs([Q, {"question": "２つ選べ。", "choices": ["a", "b", "c"]}, {**Q, "n_answers": 2}])
    assert [r["n_answers"] for r in rows] == [1, 2, 2]
    assert rows[0]["choices"] == ["甲", "乙", "丙"]


def test_params():
    from mlflow.exceptions import MlflowException

    assert check_params(None, "letter") == ("letter", 0)  # 0: fit each question's answers
    assert check_params({"protocol": "loglik", "max_new_tokens": 4}, "letter") == ("loglik", 4)
    for params, message in [
        ({"protocol": "vote"}, "param 'protocol' is 'vote'"),
        ({"max_new_tokens": -1}, "param 'max_new_tokens' is -1"),
        ({"temperature": 1}, "unknown param(s): temperature"),
    ]:
        with pytest.raises(MlflowException, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_params(params, "letter")
    # a generation protocol that cannot read the adapter's answers is refused (it answered "" before)
    assert check_params({"protocol": "loglik"}, "letter", "igakuqa") == ("loglik", 0)
    with pytest.raises(
        MlflowException, match="param 'protocol': protocol 'text' cannot read answers of prompt format 'igakuqa'"
    ):
        check_params({"protocol": "text"}, "letter", "igakuqa")


def _body(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


_JSON = {"Content-Type": "application/json"}
_OK = {"question": "どれか。", "choices": ["甲", "乙", "丙"]}
# Hostile requests to POST /invocations: (name, headers, body, status from `jmed serve`, its message).
HOSTILE = [
    ("no Content-Type", {}, _body({"dataframe_records": [_OK]}), 415, "Content-Type is required"),
    ("text/plain", {"Content-Type": "text/plain"}, _body({"dataframe_records": [_OK]}), 415, "only supports"),
    (
        "charset latin-1",
        {"Content-Type": "application/json; charset=latin-1"},
        _body({"dataframe_records": [_OK]}),
        415,
        "only supports UTF-8",
    ),
    (
        "format parameter",
        {"Content-Type": "application/json; format=pandas-records"},
        _body({"dataframe_records": [_OK]}),
        415,
        "Unrecognized content type parameters: format",
    ),
    ("nested 100,000 deep", _JSON, b"[" * 100_000 + b"]" * 100_000, 400, "invalid JSON: nested too deeply"),
    (
        "nested 100 deep",
        _JSON,
        _body({"dataframe_records": [_OK], "x": json.loads("[" * 99 + "]" * 99)}),
        400,
        "nested 100 levels deep; a request is at most 64",
    ),
    (
        "unknown param",
        _JSON,
        _body({"dataframe_records": [_OK], "params": {"temperature": 1}}),
        400,
        "unknown param(s): temperature; known: alias, max_new_tokens, protocol, version",
    ),
    ("params a list", _JSON, _body({"dataframe_records": [_OK], "params": [1]}), 400, "must be a dictionary"),
    (
        "max_new_tokens a string",
        _JSON,
        _body({"dataframe_records": [_OK], "params": {"max_new_tokens": "4"}}),
        400,
        "max_new_tokens",
    ),
    (
        "max_new_tokens 2000",
        _JSON,
        _body({"dataframe_records": [_OK], "params": {"max_new_tokens": 2000}}),
        400,
        "param 'max_new_tokens' is 2000",
    ),
    ("unknown version", _JSON, _body({"dataframe_records": [_OK], "params": {"version": "99"}}), 400, "99"),
    (
        "top-level typo",
        _JSON,
        _body({"dataframe_records": [_OK], "param": {"max_new_tokens": 4}}),
        400,
        "unknown field(s) in the request: param; known: dataframe_split",
    ),
    (
        "split index longer than its data",
        _JSON,
        _body(
            {
                "dataframe_split": {
                    "columns": ["question", "choices"],
                    "index": list(range(10)),
                    "data": [["どれか。", ["甲", "乙"]]],
                }
            }
        ),
        400,
        "dataframe_split: 10 index entries for 1 rows of data",
    ),
    (
        "one choice",
        _JSON,
        _body({"dataframe_records": [{"question": "どれか。", "choices": ["甲"]}]}),
        400,
        "'choices' has 1 entry; a question has at least 2",
    ),
    (
        "body over 16 MiB",
        _JSON,
        _body({"dataframe_records": [_OK], "pad": "x" * (16 * 1024 * 1024)}),
        413,
        "request body of 16777",
    ),
    (
        "version and alias",
        _JSON,
        _body({"dataframe_records": [_OK], "params": {"version": "1", "alias": "champion"}}),
        400,
        "give param 'version' or 'alias', not both",
    ),
    ("invalid JSON", _JSON, b'{"dataframe_records": [{"question": "q", "choices": ["a",', 400, "valid JSON"),
    (
        "invalid UTF-8",
        _JSON,
        b'{"dataframe_records": [{"question": "\xff\xfe", "choices": ["a", "b"]}]}',
        400,
        "valid JSON",
    ),
    ("empty body", _JSON, b"", 400, "valid JSON"),
    ("a JSON list", _JSON, b"[1, 2]", 400, "must be a JSON dictionary"),
    ("JSON null", _JSON, b"null", 400, "must be a JSON dictionary"),
    ("no input field", _JSON, b"{}", 400, "exactly one of the input fields"),
    ("two input forms", _JSON, _body({"dataframe_records": [_OK], "instances": [_OK]}), 400, "exactly one"),
    ("records a number", _JSON, _body({"dataframe_records": 5}), 400, "must be a list of records"),
    ("records strings", _JSON, _body({"dataframe_records": ["a", "b"]}), 400, "missing input field(s)"),
    (
        "lone surrogate in a question",
        _JSON,
        b'{"dataframe_records": [{"question": "\\ud800", "choices": ["a", "b"]}]}',
        400,
        "dataframe_records[0].question: not valid Unicode: lone surrogate \\ud800",
    ),
    (
        "lone surrogate in a choice",
        _JSON,
        b'{"dataframe_records": [{"question": "q", "choices": ["a", "\\udc00"]}]}',
        400,
        "choices[1]",
    ),
    (
        "NUL in a question",
        _JSON,
        _body({"dataframe_records": [{"question": "q\u0000", "choices": ["a", "b"]}]}),
        400,
        "question: contains a NUL character",
    ),
    (
        "n_answers 1e400",
        _JSON,
        b'{"dataframe_records": [{"question": "q", "choices": ["a", "b"], "n_answers": 1e400}]}',
        400,
        "record 0: 'n_answers' must be an integer, got inf",
    ),
    (
        "n_answers 10**30",
        _JSON,
        _body({"dataframe_records": [{**_OK, "n_answers": 10**30}]}),
        400,
        "'n_answers' is 1000000000000000000000000000000; must be between 1 and the 3 choices",
    ),
    (
        "split with a missing column",
        _JSON,
        _body({"dataframe_split": {"columns": ["question"], "data": [["q", ["a"]]]}}),
        400,
        "not a valid dataframe",
    ),
    ("inputs a string", _JSON, _body({"inputs": "q"}), 400, "input must be a table of questions"),
    ("chat messages", _JSON, _body({"messages": [{"role": "user", "content": "hi"}]}), 400, "missing input field(s)"),
    (
        "question a list",
        _JSON,
        _body({"dataframe_records": [{"question": ["q"], "choices": ["a", "b"]}]}),
        400,
        "'question' must be a string, got list",
    ),
    (
        "choices nested",
        _JSON,
        _body({"dataframe_records": [{"question": "q", "choices": [["a"]]}]}),
        400,
        "choices[0] must be a string, got list",
    ),
    (
        "257 questions",
        _JSON,
        _body({"dataframe_records": [_OK] * 257}),
        400,
        "257 questions in one request; at most 256",
    ),
    ("CSV without lists", {"Content-Type": "text/csv"}, b"question,choices\nq,a\n", 400, "'choices' must be a list"),
    ("CSV not UTF-8", {"Content-Type": "text/csv"}, b"\x00\xff\n,,,\n", 400, "valid UTF-8"),
]
# What `mlflow models serve` itself (MLflow 3.17.2) answers differently, before the model sees the request;
# the README lists these. Every other case gets the same status from both servers.
MLFLOW_ITSELF = {
    "no Content-Type": 500,
    "nested 100,000 deep": 500,
    "nested 100 deep": 200,
    "unknown param": 200,
    "top-level typo": 200,  # ignored
    "split index longer than its data": 200,  # answered 10 times
    "body over 16 MiB": 200,
}


def _front_refusal(content_type, body, known=frozenset({"alias", "max_new_tokens", "protocol", "version"})):
    from jmed.front import refusal

    return refusal(content_type, body, set(known) if known is not None else None)


def test_front_refuses_only_what_mlflow_mishandles():
    ok = _body({"dataframe_records": [_OK], "params": {"max_new_tokens": 4}})
    assert _front_refusal("application/json", ok) is None
    assert _front_refusal("application/json; charset=utf-8", ok) is None
    assert _front_refusal(None, ok) == (
        415,
        "Content-Type is required: application/json (or text/csv, application/x-parquet)",
    )
    assert _front_refusal("  ", ok)[0] == 415
    # CSV, Parquet, invalid JSON and non-dict params are MLflow's to answer (it names the problem, 4xx)
    assert _front_refusal("text/csv", b"\x00\xff") is None
    assert _front_refusal("application/json", b'{"dataframe_records": [') is None
    assert _front_refusal("application/json", _body({"inputs": [_OK], "params": [1]})) is None
    deep = lambda n: _body({"inputs": [_OK], "dataframe_split": json.loads("[" * (n - 1) + "]" * (n - 1))})  # noqa: E731
    assert _front_refusal("application/json", deep(64)) is None
    assert _front_refusal("application/json", deep(65)) == (
        400,
        "invalid JSON: nested 65 levels deep; a request is at most 64",
    )
    assert _front_refusal("application/json", b"[" * 100_000 + b"]" * 100_000) == (
        400,
        "invalid JSON: nested too deeply (a request is at most 64 levels of [ or {)",
    )
    assert _front_refusal("application/json", _body({"inputs": [_OK], "params": {"max_tokens": 4, "top_p": 1}})) == (
        400,
        "unknown param(s): max_tokens, top_p; known: alias, max_new_tokens, protocol, version",
    )
    assert _front_refusal("application/json", _body({"inputs": [_OK], "params": {"x": 1}}), known=None) == (
        400,
        "unknown param(s): x; known: none",
    )
    assert _front_refusal("application/json", b'{"inputs": [{"question": "q", "choices": ["a", "\\ud83d"]}]}') == (
        400,
        "inputs[0].choices[1]: not valid Unicode: lone surrogate \\ud83d",
    )
    assert _front_refusal(
        "application/json", _body({"instances": [{"question": "\u0000", "choices": ["a", "b"]}]})
    ) == (
        400,
        "instances[0].question: contains a NUL character (\\u0000)",
    )


def test_front_replays_the_body_to_mlflows_app_and_answers_refusals_itself():
    """The ASGI layer alone, around a plain ASGI app that echoes what it received."""
    import asyncio

    from jmed.front import guarded

    async def echo(scope, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    def call(method, path, headers, chunks):
        sent, queue = (
            [],
            [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)],
        )

        async def receive():
            return queue.pop(0)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": headers}
        asyncio.run(guarded(echo, {"version"})(scope, receive, send))
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    body = _body({"inputs": [_OK]})
    json_type = [(b"content-type", b"application/json")]
    assert call("POST", "/invocations", json_type, [body[:5], body[5:]]) == (200, body)  # chunks joined
    status, text = call("POST", "/invocations", [], [body])
    assert status == 415 and json.loads(text)["message"].startswith("Content-Type is required")
    status, text = call("POST", "/invocations", json_type, [_body({"inputs": [_OK], "params": {"top_k": 1}})])
    assert status == 400 and json.loads(text)["message"] == "unknown param(s): top_k; known: version"
    assert call("POST", "/ping", [], [b"x"]) == (200, b"x")  # other routes pass untouched


# ---- a real model in a real store, served by a real process -------------------------------------

URI = "models:/jmed-tiny@champion"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One tiny adapter trained (2 steps: barely learned, so a better one can replace it), evaluated and
    promoted in a fresh sqlite store."""
    from jmed.config import EvalConfig, TrainConfig
    from jmed.data import SAMPLE_TRAIN
    from jmed.evaluate import evaluate
    from jmed.registry import promote
    from jmed.train import train

    root = tmp_path_factory.mktemp("serving")
    with private_store(root):
        run = train(TrainConfig(max_steps=2, learning_rate=1e-2))
        evaluate(EvalConfig(adapter=run, eval_data=str(SAMPLE_TRAIN), compare_base=False, max_new_tokens=4))
        [record] = promote("tiny")
        assert record["action"] == "promote" and record["champion_version"] == "1"
        yield root


PRE_REGISTRY = "72da3d2"  # the last commit with a flat jmed/ (before jmed/readers, jmed/exams, jmed/registry/)


@pytest.mark.slow
def test_a_version_registered_before_the_package_layout_changed_still_loads(served, tmp_path, monkeypatch):
    """A registered version runs the code it was logged with: one logged with the flat layout of the
    earlier jmed loads and answers in a fresh interpreter, as under `mlflow models serve`."""
    import subprocess
    import sys

    import mlflow

    from jmed.registry import packaging

    repo = Path(__file__).resolve().parent.parent
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", PRE_REGISTRY, "jmed"], capture_output=True)
    if archive.returncode:
        pytest.skip(f"needs the git history of this checkout (commit {PRE_REGISTRY}): {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    assert not (old / "jmed" / "readers").exists() and (old / "jmed" / "registry.py").exists()
    shutil.rmtree(old / "jmed" / "sample")
    monkeypatch.setattr(packaging, "_code_copy", lambda dest: old / "jmed")
    monkeypatch.setattr(packaging, "SERVING_FILE", old / "jmed" / "serving.py")
    with private_store(served):
        local = Path(mlflow.artifacts.download_artifacts(f"{URI}"))
        adapter_dir = local / "artifacts" / "adapter"
        with mlflow.start_run():
            info = packaging.log_serving_model(adapter_dir)
        version = mlflow.register_model(info.model_uri, "jmed-tiny-old-layout").version
        uri = mlflow.get_tracking_uri()
    code = (
        "import json, sys, mlflow, pandas as pd; m = mlflow.pyfunc.load_model('models:/jmed-tiny-old-layout/"
        f"{version}'); out = m.predict(pd.DataFrame([{{'question': 'どれか。', 'choices': ['甲', '乙', '丙']}}]), "
        "params={'max_new_tokens': 2}); import jmed; print(json.dumps({'jmed': jmed.__file__, "
        "'readers': 'jmed.readers' in sys.modules, 'cols': list(out.columns), 'n': len(out)}))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert "/code/jmed/" in got["jmed"] and got["n"] == 1 and "answer" in got["cols"]  # its own code copy ran
    assert got["readers"] is False


def batch(n: int) -> list[dict]:
    from jmed.data import SAMPLE_TEST, load_questions

    qs = [q for q in load_questions(SAMPLE_TEST) if q.choices][:n]
    return [{"question": q.stem, "choices": list(q.choices)} for q in qs]


@pytest.mark.slow
def test_logged_model_is_code_with_pinned_requirements_and_safetensors(served):
    from importlib.metadata import version

    import mlflow
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(URI))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.bin")) and not list(local.rglob("*.pt"))
    assert (local / "code" / "jmed" / "serving.py").exists()
    # the code copy has every subpackage: readers and exam kinds are imported by prompts and scoring
    assert (local / "code" / "jmed" / "readers" / "igakuqa.py").exists()
    assert (local / "code" / "jmed" / "exams" / "medical.py").exists()
    assert flavor["config"]["bundled"] is True and flavor["config"]["base_model"] == "tiny"
    arts = flavor["artifacts"]
    assert (local / arts["adapter"]["path"] / "adapter_model.safetensors").exists()
    meta = json.loads((local / arts["adapter"]["path"] / "jmed.json").read_text())
    assert meta["prompt_format"] == "igakuqa" and meta["protocol"] == "letter" and meta["config"]["max_steps"] == 2
    assert (local / arts["base"]["path"] / "model.safetensors").exists()
    reqs = (local / "requirements.txt").read_text().split()
    assert f"mlflow=={version('mlflow')}" in reqs and f"peft=={version('peft')}" in reqs
    assert all("==" in r for r in reqs)
    sig = json.loads(mlmodel["signature"]["params"])
    assert {p["name"]: p["default"] for p in sig} == {
        "protocol": "letter",
        "max_new_tokens": 0,
        "version": "",
        "alias": "",
    }
    assert (local / "input_example.json").exists()


@pytest.mark.slow
def test_serve_precision_loads_the_base_in_another_precision(served, monkeypatch):
    """`jmed serve --precision` (JMED_SERVE_PRECISION in the served process) over the version's own."""
    import mlflow
    import pandas as pd
    import torch

    own = mlflow.pyfunc.load_model(URI).unwrap_python_model().model
    assert next(own.parameters()).dtype == torch.float32  # tiny: `auto` keeps a small model in fp32
    monkeypatch.setenv("JMED_SERVE_PRECISION", "bf16")
    model = mlflow.pyfunc.load_model(URI)
    assert next(model.unwrap_python_model().model.parameters()).dtype == torch.bfloat16
    assert len(model.predict(pd.DataFrame(batch(2)), params={"max_new_tokens": 2})) == 2


@pytest.mark.slow
def test_predict_offline_and_cli(served, tmp_path):
    import mlflow
    import pandas as pd
    from click.testing import CliRunner

    from jmed.cli import main

    model = mlflow.pyfunc.load_model(URI)
    out = model.predict(pd.DataFrame(batch(3)), params={"max_new_tokens": 4})
    # one vocabulary: the names predict writes and score reads, then jmed 0.2's names as aliases
    assert list(out.columns) == [
        "prediction",
        "answer_text",
        "response",
        "model_version",
        "n_answers",
        "count_mismatch",
        "answer",
        "raw_output",
    ]
    assert len(out) == 3 and list(out["answer"]) == list(out["prediction"])
    assert list(out["raw_output"]) == list(out["response"])
    assert set(out["model_version"]) == {""}  # loaded without a models:/ URI known to it
    for _, r in out.iterrows():  # the flag says what the letters and the count say
        assert r["count_mismatch"] == (bool(r["prediction"]) and len(r["prediction"].split(",")) != r["n_answers"])
    ll = model.predict(pd.DataFrame(batch(2)), params={"protocol": "loglik"})
    assert all(a in "abcde" and len(a) == 1 for a in ll["prediction"])
    assert set(json.loads(ll["response"][0])) == {"a", "b", "c", "d", "e"}
    assert not ll["count_mismatch"].any()  # loglik picks n_answers choices

    src = tmp_path / "questions.jsonl"
    src.write_text(
        "\n".join(json.dumps({"id": f"q{i}", **r}, ensure_ascii=False) for i, r in enumerate(batch(3))) + "\n",
        encoding="utf-8",
    )
    res = CliRunner().invoke(main, ["predict", "--model-uri", URI, "--max-new-tokens", "4", str(src)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["problem_id"] for x in lines] == ["q0", "q1", "q2"]
    assert [x["prediction"] for x in lines] == list(out["prediction"])
    assert set(lines[0]) == {
        "problem_id",
        "prediction",
        "answer_text",
        "response",
        "model_version",
        "n_answers",
        "count_mismatch",
    }
    assert {x["model_version"] for x in lines} == {"1"}  # predict knows the URI: the champion is version 1

    # an IgakuQA-format file works too, and `jmed score` reads the output
    from jmed.data import SAMPLE_TEST, load_questions

    qs = load_questions(SAMPLE_TEST)
    res = CliRunner().invoke(
        main,
        ["predict", "--model-uri", URI, "--max-new-tokens", "4", str(SAMPLE_TEST), "-o", str(tmp_path / "pred.jsonl")],
    )
    assert res.exit_code == 0, res.output
    preds = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["problem_id"] for p in preds] == [q.id for q in qs if q.choices]
    res = CliRunner().invoke(
        main, ["score", "--data", str(SAMPLE_TEST), "--predictions", str(tmp_path / "pred.jsonl"), "--json"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["questions"], summary["missing"]) == (len(qs), sum(1 for q in qs if not q.choices))

    # lines with different optional fields (n_answers on some, id on some): allowed, so no traceback
    mixed = tmp_path / "mixed.jsonl"
    three = batch(3)
    mixed.write_text(
        "\n".join(
            json.dumps(r, ensure_ascii=False)
            for r in ({**three[0], "n_answers": 2, "id": "x1"}, three[1], {**three[2], "id": "x3"})
        )
        + "\n",
        encoding="utf-8",
    )
    res = CliRunner().invoke(main, ["predict", "--model-uri", URI, "--protocol", "loglik", str(mixed)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["problem_id"] for x in lines] == ["x1", "2", "x3"]  # no id: the line number
    from jmed.metrics import n_select

    # loglik picks n_answers choices: given, else 「Nつ選べ」 in the stem
    assert [len(x["prediction"].split(",")) for x in lines] == [
        2,
        n_select(three[1]["question"]),
        n_select(three[2]["question"]),
    ]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"]}\n{"question": "q", "choices": []}\nnot json\n')
    res = CliRunner().invoke(main, ["predict", "--model-uri", URI, str(bad)])
    assert res.exit_code == 1
    assert f"{bad}:2: 'choices' is empty" in res.output and f"{bad}:3: invalid JSON" in res.output


@pytest.mark.slow
def test_served_over_http(served, tmp_path):
    import mlflow
    import pandas as pd
    import requests

    from jmed.server import free_port, group_alive, start_server, stop_server

    port = free_port()
    proc, ready = start_server(URI, port, log_path=tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}/invocations"
    try:
        model = mlflow.pyfunc.load_model(URI)
        for records in (batch(1), batch(8)):
            r = requests.post(url, json={"dataframe_records": records, "params": {"max_new_tokens": 4}}, timeout=60)
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            want = model.predict(pd.DataFrame(records), params={"max_new_tokens": 4}).to_dict("records")
            # the server knows it serves models:/jmed-tiny@champion, version 1
            assert got == [{**w, "model_version": "1"} for w in want] and len(got) == len(records)
        bad_requests = [
            ({"dataframe_records": [{"question": "q"}]}, "missing input field(s): choices"),
            ({"dataframe_records": [{"question": "q", "choices": []}]}, "'choices' is empty"),
            # the model sees the raw rows (no input schema to convert them first): record and field named
            (
                {"dataframe_records": [{"question": "q", "choices": [1, 2]}]},
                "record 0: choices[0] must be a string, got int",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": ["a", 2]}]},
                "record 0: choices[1] must be a string, got int",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": [{"a": 1}, "b"]}]},
                "record 0: choices[0] must be a string, got dict",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": ["a", None]}]},
                "record 0: choices[1] must be a string, got NoneType",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": ["a", "b"], "n_answers": "1"}]},
                "record 0: 'n_answers' must be an integer, got '1'",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": ["a", "b"], "n_answers": 1.5}]},
                "record 0: 'n_answers' must be an integer, got 1.5",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": ["a", "b"], "n_answers": True}]},
                "record 0: 'n_answers' must be an integer, got True",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": ["a", "b"], "foo": 1}]},
                "unknown input field(s): foo",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": [str(i) for i in range(27)]}]},
                "'choices' has 27 entries; at most 26",
            ),
            (
                {"dataframe_records": [{"question": "x" * 20001, "choices": ["a", "b"]}]},
                "'question' has 20001 characters; at most 20000",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": ["y" * 20001, "b"]}]},
                "choices[0] has 20001 characters; at most 20000",
            ),
            ({"dataframe_records": [{"question": 5, "choices": ["a", "b"]}]}, "'question' must be a string, got int"),
            (
                {"dataframe_records": [{"question": "q", "choices": "ab"}]},
                "'choices' must be a list of strings, got str",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": ["a", "b"], "n_answers": "two"}]},
                "record 0: 'n_answers' must be an integer, got 'two'",
            ),
            (
                {"dataframe_records": [{"question": "q", "choices": ["a", "b"]}], "params": {"protocol": "vote"}},
                "param 'protocol' is 'vote'",
            ),
        ]
        for body, message in bad_requests:
            r = requests.post(url, json=body, timeout=60)
            assert 400 <= r.status_code < 500 and message in r.json()["message"], (body, r.status_code, r.text[:300])
        # every request form MLflow documents for pyfunc gives the same answers
        want = [
            {**w, "model_version": "1"}
            for w in model.predict(pd.DataFrame(batch(2)), params={"max_new_tokens": 4}).to_dict("records")
        ]
        two = batch(2)
        for body in (
            {"instances": two},
            {"inputs": two},
            {"inputs": {"question": [r["question"] for r in two], "choices": [r["choices"] for r in two]}},
            {
                "dataframe_split": {
                    "columns": ["question", "choices"],
                    "data": [[r["question"], r["choices"]] for r in two],
                }
            },
        ):
            r = requests.post(url, json={**body, "params": {"max_new_tokens": 4}}, timeout=60)
            assert r.status_code == 200 and r.json()["predictions"] == want, (list(body), r.text[:300])
        r = requests.post(
            url,
            data='{"dataframe_records": [{"question": "q", "choices": ["a",',
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert r.status_code == 400 and "valid JSON" in r.json()["message"]
        # the hostile corpus: MLflow's own server answers exactly as `jmed serve` does but for MLFLOW_ITSELF
        got = _answers(url, front=False)
        assert {name: got[name][0] for name in MLFLOW_ITSELF} == MLFLOW_ITSELF, got
        assert {name: got[name][0] for name, *_, status, _ in HOSTILE if name not in MLFLOW_ITSELF} == {
            name: status for name, *_, status, _ in HOSTILE if name not in MLFLOW_ITSELF
        }, got
        r = requests.post(url, json={"dataframe_records": batch(1), "params": {"max_new_tokens": 4}}, timeout=60)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    finally:
        stop_server(proc)
    assert proc.poll() is not None and not group_alive(proc.pid)


@pytest.mark.slow
def test_base_referenced_not_bundled_and_revision_checked(served, tmp_path):
    """bundle_base=False: the base is named by id and revision, not copied; a wrong revision is refused."""
    import mlflow
    import pandas as pd
    import yaml
    from mlflow.exceptions import MlflowException

    from jmed.registry import log_serving_model

    champion = mlflow.pyfunc.load_model(URI)
    train_run = mlflow.MlflowClient().get_model_version_by_alias("jmed-tiny", "champion").tags["jmed.train_run"]
    adapter = Path(
        mlflow.artifacts.download_artifacts(run_id=train_run, artifact_path="adapter", dst_path=str(tmp_path))
    )
    with mlflow.start_run():
        info = log_serving_model(adapter, bundle_base=False)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert set(flavor["artifacts"]) == {"adapter"} and flavor["config"]["bundled"] is False
    assert flavor["config"]["base_revision"].startswith("sha256:")
    records = pd.DataFrame(batch(3))
    assert mlflow.pyfunc.load_model(info.model_uri).predict(records).equals(champion.predict(records))

    meta = json.loads((adapter / "jmed.json").read_text())
    (adapter / "jmed.json").write_text(json.dumps({**meta, "base_revision": "sha256:" + "0" * 64}))
    with mlflow.start_run():
        wrong = log_serving_model(adapter, bundle_base=False)
    with pytest.raises(MlflowException, match="but the adapter was trained on revision sha256:0000"):
        mlflow.pyfunc.load_model(wrong.model_uri)


@pytest.mark.slow
def test_served_model_uses_its_own_code_copy(served):
    """The model carries the jmed package (code_paths): a fresh process loads jmed from the model's code/."""
    import subprocess
    import sys

    code = "import mlflow, sys; m = mlflow.pyfunc.load_model(sys.argv[1]); import jmed; print(jmed.__file__)"
    out = subprocess.run([sys.executable, "-c", code, URI], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith(os.path.join("code", "jmed", "__init__.py")), out.stdout
    # so does the model behind `jmed serve`'s front, though the front itself was imported from jmed
    code = (
        "import sys, jmed.front; jmed.front.build(sys.argv[1]); "
        "print(sys.modules['jmed.contract'].__file__, jmed.front.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code, URI], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    serving, front = out.stdout.split()
    assert serving.endswith(os.path.join("code", "jmed", "contract.py")) and "code" not in Path(front).parts, out.stdout


@pytest.mark.slow
def test_jmed_serve_resolves_the_champion_and_answers_every_request_with_its_true_status(served, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import requests

    from jmed.registry import champion_uri
    from jmed.server import free_port, group_alive, stop_server

    assert champion_uri() == champion_uri("tiny") == URI
    with pytest.raises(ValueError, match="registered model jmed-other has no 'champion' alias"):
        champion_uri("other")
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "jmed"), "serve", "--port", str(port)],
        stdout=open(tmp_path / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline, "jmed serve not ready"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/invocations"
        r = requests.post(url, json={"dataframe_records": batch(2)}, timeout=60)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
        # every hostile request gets its true status and a message naming the problem: no 5xx
        got = _answers(url)
        for name, _, _, status, message in HOSTILE:
            assert got[name][0] == status and message in got[name][1], (name, got[name])
        # every request form MLflow documents still gives the champion's answers
        import mlflow
        import pandas as pd

        two = batch(2)
        want = [
            {**w, "model_version": "1"}
            for w in mlflow.pyfunc.load_model(URI)
            .predict(pd.DataFrame(two), params={"max_new_tokens": 4})
            .to_dict("records")
        ]
        for body in (
            {"dataframe_records": two},
            {"instances": two},
            {"inputs": two},
            {"inputs": {"question": [r["question"] for r in two], "choices": [r["choices"] for r in two]}},
            {
                "dataframe_split": {
                    "columns": ["question", "choices"],
                    "data": [[r["question"], r["choices"]] for r in two],
                }
            },
        ):
            r = requests.post(url, json={**body, "params": {"max_new_tokens": 4}}, timeout=60)
            assert r.status_code == 200 and r.json()["predictions"] == want, (list(body), r.text[:300])
        # seeded fuzz: a valid request cut, spliced and byte-flipped, 200 times; never a 5xx
        import random

        rng, valid = random.Random(0), _body({"dataframe_records": two, "params": {"max_new_tokens": 2}})
        statuses = []
        for _ in range(200):
            b = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(b))
                op = rng.randrange(3)
                if op == 0:
                    b[i] = rng.randrange(256)
                elif op == 1:
                    del b[i : i + rng.randint(1, 20)]
                else:
                    b[i:i] = rng.choice([b"[", b"{", b'"', b"\\ud800", b"null", b"1e999", b",", b"\x00"])
            headers = rng.choice([_JSON, _JSON, {}, {"Content-Type": "text/csv"}])
            statuses.append(requests.post(url, data=bytes(b), headers=headers, timeout=60).status_code)
        assert max(statuses) < 500 and statuses.count(200) < 200, sorted(set(statuses))
        assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=10).status_code == 200  # still serving
        # SIGTERM (kill, systemd, Kubernetes) to the `jmed serve` process stops the server and leaves nothing
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)  # uvicorn shuts down gracefully, then exits by the signal it got (-15)
        assert "Finished server process" in (tmp_path / "serve.log").read_text()
        deadline = time.time() + 30
        while group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert not group_alive(proc.pid)
    finally:
        stop_server(proc)


def _answers(url: str, front: bool = True) -> dict:
    """{case name: (status, message)} for every HOSTILE request; behind jmed's front (`front`), no 4xx
    answer carries a stack trace."""
    import requests

    got = {}
    for name, headers, body, _, _ in HOSTILE:
        r = requests.post(url, data=body, headers=headers, timeout=60)
        try:
            message = r.json().get("message", r.text)
        except (ValueError, AttributeError):  # MLflow's 415s are text
            message = r.text
        got[name] = (r.status_code, message)
        if front and r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
            assert "stack_trace" not in r.json(), (name, r.text[:300])  # a client never sees the server's code
    return got


def post(url: str, records: list, params: dict | None = None):
    import requests

    return requests.post(
        url, json={"dataframe_records": records, "params": {"max_new_tokens": 4, **(params or {})}}, timeout=120
    )


@pytest.mark.slow
def test_concurrent_requests_are_batched_the_champion_is_followed_and_versions_chosen(served, tmp_path):
    """One real server: concurrent requests get their own answers; a bad one in a burst fails alone;
    `promote` moving the alias is followed without a restart and without a failed request; `version`
    and `alias` params choose the adapter; unknown versions and versions of another base get 4xx."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import mlflow
    import pandas as pd

    from jmed.config import EvalConfig, TrainConfig
    from jmed.data import SAMPLE_TRAIN
    from jmed.evaluate import evaluate
    from jmed.registry import log_serving_model, promote
    from jmed.server import free_port, group_alive, start_server, stop_server
    from jmed.train import train

    port = free_port()
    # through `jmed serve`'s front (jmed.front): batching, alias following and version choice live in the
    # served model, below it; test_served_over_http covers `mlflow models serve` itself
    server_tmp = tmp_path / "server-tmp"  # where it downloads other versions
    server_tmp.mkdir()
    proc, _ = start_server(
        URI,
        port,
        log_path=tmp_path / "serve.log",
        env={"JMED_SERVE_POLL_S": "0.5", "TMPDIR": str(server_tmp)},
        front=True,
    )
    url = f"http://127.0.0.1:{port}/invocations"
    try:
        # 1. eight concurrent requests, each its own question: each gets exactly its own answer
        v1 = mlflow.pyfunc.load_model("models:/jmed-tiny/1")
        records = batch(8)
        want = [v1.predict(pd.DataFrame([r]), params={"max_new_tokens": 4}).to_dict("records")[0] for r in records]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda r: post(url, [r]), records))
        assert [r.status_code for r in got] == [200] * 8
        assert [r.json()["predictions"][0] for r in got] == [{**w, "model_version": "1"} for w in want]

        # 2. a bad request inside a burst gets 400; the others 200
        bodies = [[r] for r in records[:6]] + [[{"question": "q", "choices": []}]] + [[records[6]]]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda b: post(url, b), bodies))
        assert [r.status_code for r in got] == [200] * 6 + [400, 200]
        assert "'choices' is empty" in got[6].json()["message"]

        # 3. promote moves champion to a better adapter under a steady background load: followed, 0 failures
        statuses, versions, stop = [], [], threading.Event()

        def load():
            while not stop.is_set():
                r = post(url, records[:2])
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["predictions"][0]["model_version"])

        loaders = [threading.Thread(target=load) for _ in range(2)]
        for t in loaders:
            t.start()
        try:
            better = train(TrainConfig(max_steps=30, learning_rate=1e-2))
            evaluate(EvalConfig(adapter=better, eval_data=str(SAMPLE_TRAIN), compare_base=False, max_new_tokens=4))
            [record] = promote("tiny")
            assert record["action"] == "promote" and record["champion_version"] == "2", record
            deadline = time.time() + 120
            while "2" not in versions[-4:]:
                assert time.time() < deadline, "the server did not follow the alias"
                time.sleep(0.2)
        finally:
            stop.set()
            for t in loaders:
                t.join()
        assert statuses and set(statuses) == {200}, statuses  # no request failed during the switch
        switched = versions.index("2")
        assert set(versions[:switched]) == {"1"} and versions[-1] == "2"
        assert post(url, records[:1]).json()["predictions"][0]["model_version"] == "2"

        # 4. version and alias params pick the adapter; the old version still answers as it did
        r = post(url, records, {"version": "1"})
        assert r.status_code == 200 and r.json()["predictions"] == [
            {**w, "model_version": "1"}
            for w in v1.predict(pd.DataFrame(records), params={"max_new_tokens": 4}).to_dict("records")
        ]
        assert {p["model_version"] for p in post(url, records[:2], {"alias": "champion"}).json()["predictions"]} == {
            "2"
        }
        r = post(url, records[:1], {"version": "9"})
        assert (
            r.status_code == 400 and "version 9 of jmed-tiny is not registered; available: 1, 2" in r.json()["message"]
        )
        r = post(url, records[:1], {"alias": "nightly"})
        assert r.status_code == 400 and "alias 'nightly' is not set on jmed-tiny" in r.json()["message"]

        # 5. a version trained on another revision of the base is refused, naming both
        folder = Path(
            mlflow.artifacts.download_artifacts(run_id=better, artifact_path="adapter", dst_path=str(tmp_path))
        )
        meta = json.loads((folder / "jmed.json").read_text())
        (folder / "jmed.json").write_text(json.dumps({**meta, "base_revision": "sha256:" + "0" * 64}))
        with mlflow.start_run():
            info = log_serving_model(folder)
        assert str(mlflow.register_model(info.model_uri, "jmed-tiny").version) == "3"
        r = post(url, records[:1], {"version": "3"})
        assert r.status_code == 400 and "revision sha256:0000" in r.json()["message"], r.text
        assert post(url, records[:1]).status_code == 200  # still serving

        # 6. an adapter file edited after registration (lora_alpha 16 -> 1600) is refused by name; the
        #    refusal is remembered, with no new download (the file put back, still refused), until the
        #    registry's record of the version changes; failed downloads leave no folder behind
        from urllib.parse import urlparse

        from jmed import adapter

        client = mlflow.MlflowClient()
        clean = Path(
            mlflow.artifacts.download_artifacts(run_id=better, artifact_path="adapter", dst_path=str(tmp_path / "v4"))
        )
        with mlflow.start_run():
            info = log_serving_model(clean)
        assert str(mlflow.register_model(info.model_uri, "jmed-tiny").version) == "4"
        client.set_model_version_tag("jmed-tiny", "4", adapter.DIGEST_TAG, adapter.digest(clean))
        stored = Path(urlparse(client.get_logged_model(info.model_id).artifact_location).path)
        [config] = stored.rglob("adapter_config.json")
        original = config.read_text()
        config.write_text(original.replace('"lora_alpha": 16', '"lora_alpha": 1600'))
        with pytest.MonkeyPatch.context() as mp:  # served as the default version (`mlflow models serve -m …/4`)
            mp.setenv("JMED_MODEL_URI", "models:/jmed-tiny/4")
            with pytest.raises(mlflow.exceptions.MlflowException, match="version 4 of jmed-tiny: the downloaded"):
                mlflow.pyfunc.load_model("models:/jmed-tiny/4")
        refused = post(url, records[:1], {"version": "4"})
        assert refused.status_code == 400, refused.text
        message = refused.json()["message"]
        assert "version 4 of jmed-tiny: the downloaded adapter's sha256 " in message and (
            "the artifact was changed after registration, and is not served" in message
        )
        assert "stack_trace" not in refused.json()
        # what stays downloaded is what serves (v2, followed): v3's and v4's failed downloads are gone
        assert [p.name[:3] for p in server_tmp.glob("jmed-serve-*/v*")] == ["v2-"]
        config.write_text(original)
        again = post(url, records[:1], {"version": "4"})
        assert again.status_code == 400 and again.json()["message"] == message  # remembered, not fetched again
        client.set_model_version_tag("jmed-tiny", "4", "jmed.note", "artifact restored")  # the record changes
        fixed = post(url, records[:1], {"version": "4"})
        assert fixed.status_code == 200 and fixed.json()["predictions"][0]["model_version"] == "4", fixed.text
        assert len(list(server_tmp.glob("jmed-serve-*/v4-*"))) == 1
    finally:
        stop_server(proc)
    assert proc.poll() is not None and not group_alive(proc.pid)
    assert not list(server_tmp.glob("jmed-serve-*"))  # the downloads folder goes with the server


CAP_BYTES = 5 * 1024**3  # the server's address space: about 2.3 GiB above an idle tiny server's


def test_under_a_memory_cap_rows_at_the_token_limit_never_fail_the_short_ones(served, tmp_path):
    """One hostile client sends 32 rows at the model's prompt limit per request while four normal clients
    send short questions, to one server whose address space is capped: every request is answered (engine
    batches hold at most MAX_BATCH_TOKENS padded tokens; a request that fails a shared batch is retried
    alone); a row over the limit is 400 naming it, before any model work."""
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from jmed.server import free_port, serve_command, serve_env, start_process, stop_server

    port = free_port()
    capped = [
        sys.executable,
        "-c",
        f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({CAP_BYTES}, {CAP_BYTES})); "
        "os.execv(sys.argv[1], sys.argv[1:])",
        *serve_command(URI, port=port, front=True),
    ]
    env = serve_env(URI, {"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": 300})
    proc, _ = start_process(capped, env, port, "/ping", tmp_path / "serve.log", 180, "capped server")
    url = f"http://127.0.0.1:{port}/invocations"
    choices = ["甲", "乙", "丙", "丁", "戊"]
    at_limit = {"question": "心" * 1900, "choices": choices}  # about 1,950 prompt tokens of the tiny model's 2,048
    try:
        over = post(url, [{"question": "心" * 2100, "choices": choices}])
        assert over.status_code == 400, over.text
        assert "record 0: the prompt is " in over.json()["message"] and "tokens; at most 2048" in over.json()["message"]
        hostile, stop = [], threading.Event()

        def attack():
            while not stop.is_set():
                hostile.append(post(url, [at_limit] * 32).status_code)

        attacker = threading.Thread(target=attack)
        attacker.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                normal = list(pool.map(lambda i: post(url, batch(2)).status_code, range(24)))
        finally:
            stop.set()
            attacker.join(300)
        assert normal == [200] * 24
        assert hostile and set(hostile) == {200}, hostile
    finally:
        stop_server(proc)


def test_jmed_serve_stops_within_its_bound_while_a_request_waits(served, tmp_path):
    """SIGTERM with a request held in a batch that would wait ten minutes: the server finishes within
    SHUTDOWN_S (plus start-up slack), the request gets its answer or its connection closed, and nothing
    of the server is left."""
    import signal
    import threading

    import requests

    from jmed.server import SHUTDOWN_S, free_port, group_alive, start_server, stop_server

    port = free_port()
    env = {"JMED_SERVE_WAIT_MS": "600000", "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "900"}
    proc, _ = start_server(URI, port, log_path=tmp_path / "serve.log", env=env, front=True)
    outcome = []

    def ask():
        try:
            outcome.append(
                requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": batch(1)}, timeout=300)
            )
        except requests.RequestException as exc:
            outcome.append(exc)

    asker = threading.Thread(target=ask)
    try:
        asker.start()
        threading.Event().wait(2)  # the request reaches the batcher, where it would wait ten minutes
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=SHUTDOWN_S + 60)
        asker.join(60)
        assert not asker.is_alive() and outcome
        assert not isinstance(outcome[0], requests.Response) or outcome[0].status_code != 200
    finally:
        stop_server(proc)
    assert not group_alive(proc.pid)


def test_count_mismatch_is_flagged_in_serving_and_predict():
    """One letter for a 「2つ選べ」 question (the model said "a,a,a,a"): flagged by the served model and by
    predict, also for a version registered by jmed 0.2, which answers `answer`/`raw_output` only."""
    from jmed.registry.predict import served_fields
    from jmed.serving import JmedModel

    two = {"question": "正しいのはどれか。2つ選べ。", "choices": ["あ", "い", "う", "え", "お"]}
    row = JmedModel._row(("a",), {**two, "n_answers": 2}, "a,a,a,a")
    assert (row["prediction"], row["n_answers"], row["count_mismatch"]) == ("a", 2, True)
    assert JmedModel._row(("a", "c"), {**two, "n_answers": 2}, "a,c")["count_mismatch"] is False
    assert JmedModel._row((), {**two, "n_answers": 2}, "???")["count_mismatch"] is False  # unparsed, not a count
    old = {"answer": "a", "answer_text": "あ", "raw_output": "a,a,a,a", "model_version": "1"}
    assert served_fields(old, dict(two)) == {
        "prediction": "a",
        "answer_text": "あ",
        "response": "a,a,a,a",
        "model_version": "1",
        "n_answers": 2,  # from 「2つ選べ」, as the server reads it
        "count_mismatch": True,
    }
