"""The served model: input checks, then a real `mlflow models serve` process answering HTTP requests."""
import json
import os
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
    ("11 choices", [{**Q, "choices": [str(i) for i in range(11)]}], "'choices' has 11 entries; at most 10"),
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
    for params, message in [({"protocol": "vote"}, "param 'protocol' is 'vote'"),
                            ({"max_new_tokens": -1}, "param 'max_new_tokens' is -1"),
                            ({"temperature": 1}, "unknown param(s): temperature")]:
        with pytest.raises(MlflowException, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_params(params, "letter")
    # a generation protocol that cannot read the adapter's answers is refused (it answered "" before)
    assert check_params({"protocol": "loglik"}, "letter", "igakuqa") == ("loglik", 0)
    with pytest.raises(MlflowException, match="param 'protocol': protocol 'text' cannot read answers of prompt format "
                                              "'igakuqa'"):
        check_params({"protocol": "text"}, "letter", "igakuqa")


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


def batch(n: int) -> list[dict]:
    from jmed.data import SAMPLE_TEST, load_questions

    qs = [q for q in load_questions(SAMPLE_TEST) if q.choices][:n]
    return [{"question": q.stem, "choices": list(q.choices)} for q in qs]


@pytest.mark.slow
def test_logged_model_is_code_with_pinned_requirements_and_safetensors(served):
    import mlflow
    import yaml
    from importlib.metadata import version

    local = Path(mlflow.artifacts.download_artifacts(URI))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.bin")) and not list(local.rglob("*.pt"))
    assert (local / "code" / "jmed" / "serving.py").exists()
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
    assert {p["name"]: p["default"] for p in sig} == {"protocol": "letter", "max_new_tokens": 0, "version": "",
                                                      "alias": ""}
    assert (local / "input_example.json").exists()


@pytest.mark.slow
def test_predict_offline_and_cli(served, tmp_path):
    import mlflow
    import pandas as pd
    from click.testing import CliRunner

    from jmed.cli import main

    model = mlflow.pyfunc.load_model(URI)
    out = model.predict(pd.DataFrame(batch(3)), params={"max_new_tokens": 4})
    assert list(out.columns) == ["answer", "answer_text", "raw_output", "model_version"] and len(out) == 3
    assert set(out["model_version"]) == {""}  # loaded without a models:/ URI known to it
    ll = model.predict(pd.DataFrame(batch(2)), params={"protocol": "loglik"})
    assert all(a in "abcde" and len(a) == 1 for a in ll["answer"])
    assert set(json.loads(ll["raw_output"][0])) == {"a", "b", "c", "d", "e"}

    src = tmp_path / "questions.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"q{i}", **r}, ensure_ascii=False)
                             for i, r in enumerate(batch(3))) + "\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["predict", "--model-uri", URI, "--max-new-tokens", "4", str(src)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["problem_id"] for x in lines] == ["q0", "q1", "q2"]
    assert [x["prediction"] for x in lines] == list(out["answer"])
    assert {x["model_version"] for x in lines} == {"1"}  # predict knows the URI: the champion is version 1

    # an IgakuQA-format file works too, and `jmed score` reads the output
    from jmed.data import SAMPLE_TEST, load_questions

    qs = load_questions(SAMPLE_TEST)
    res = CliRunner().invoke(main, ["predict", "--model-uri", URI, "--max-new-tokens", "4", str(SAMPLE_TEST),
                                    "-o", str(tmp_path / "pred.jsonl")])
    assert res.exit_code == 0, res.output
    preds = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["problem_id"] for p in preds] == [q.id for q in qs if q.choices]
    res = CliRunner().invoke(main, ["score", "--data", str(SAMPLE_TEST), "--predictions", str(tmp_path / "pred.jsonl"),
                                    "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["questions"], summary["missing"]) == (len(qs), sum(1 for q in qs if not q.choices))

    # lines with different optional fields (n_answers on some, id on some): allowed, so no traceback
    mixed = tmp_path / "mixed.jsonl"
    three = batch(3)
    mixed.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (
        {**three[0], "n_answers": 2, "id": "x1"}, three[1], {**three[2], "id": "x3"})) + "\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["predict", "--model-uri", URI, "--protocol", "loglik", str(mixed)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["problem_id"] for x in lines] == ["x1", "2", "x3"]  # no id: the line number
    from jmed.metrics import n_select

    # loglik picks n_answers choices: given, else 「Nつ選べ」 in the stem
    assert [len(x["prediction"].split(",")) for x in lines] == [2, n_select(three[1]["question"]),
                                                                 n_select(three[2]["question"])]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a"]}\n{"question": "q", "choices": []}\nnot json\n')
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
            ({"dataframe_records": [{"question": "q", "choices": [1, 2]}]}, "record 0: choices[0] must be a string, got int"),
            ({"dataframe_records": [{"question": "q", "choices": ["a", 2]}]}, "record 0: choices[1] must be a string, got int"),
            ({"dataframe_records": [{"question": "q", "choices": [{"a": 1}, "b"]}]},
             "record 0: choices[0] must be a string, got dict"),
            ({"dataframe_records": [{"question": "q", "choices": ["a", None]}]},
             "record 0: choices[1] must be a string, got NoneType"),
            ({"dataframe_records": [{"question": "q", "choices": ["a"], "n_answers": "1"}]},
             "record 0: 'n_answers' must be an integer, got '1'"),
            ({"dataframe_records": [{"question": "q", "choices": ["a", "b"], "n_answers": 1.5}]},
             "record 0: 'n_answers' must be an integer, got 1.5"),
            ({"dataframe_records": [{"question": "q", "choices": ["a"], "n_answers": True}]},
             "record 0: 'n_answers' must be an integer, got True"),
            ({"dataframe_records": [{"question": "q", "choices": ["a"], "foo": 1}]}, "unknown input field(s): foo"),
            ({"dataframe_records": [{"question": "q", "choices": [str(i) for i in range(11)]}]},
             "'choices' has 11 entries; at most 10"),
            ({"dataframe_records": [{"question": "x" * 20001, "choices": ["a"]}]},
             "'question' has 20001 characters; at most 20000"),
            ({"dataframe_records": [{"question": "q", "choices": ["y" * 20001]}]},
             "choices[0] has 20001 characters; at most 20000"),
            ({"dataframe_records": [{"question": 5, "choices": ["a"]}]}, "'question' must be a string, got int"),
            ({"dataframe_records": [{"question": "q", "choices": "ab"}]}, "'choices' must be a list of strings, got str"),
            ({"dataframe_records": [{"question": "q", "choices": ["a"], "n_answers": "two"}]},
             "record 0: 'n_answers' must be an integer, got 'two'"),
            ({"dataframe_records": [{"question": "q", "choices": ["a"]}], "params": {"protocol": "vote"}},
             "param 'protocol' is 'vote'"),
        ]
        for body, message in bad_requests:
            r = requests.post(url, json=body, timeout=60)
            assert 400 <= r.status_code < 500 and message in r.json()["message"], (body, r.status_code, r.text[:300])
        # every request form MLflow documents for pyfunc gives the same answers
        want = [{**w, "model_version": "1"} for w in
                model.predict(pd.DataFrame(batch(2)), params={"max_new_tokens": 4}).to_dict("records")]
        two = batch(2)
        for body in ({"instances": two}, {"inputs": two},
                     {"inputs": {"question": [r["question"] for r in two], "choices": [r["choices"] for r in two]}},
                     {"dataframe_split": {"columns": ["question", "choices"],
                                          "data": [[r["question"], r["choices"]] for r in two]}}):
            r = requests.post(url, json={**body, "params": {"max_new_tokens": 4}}, timeout=60)
            assert r.status_code == 200 and r.json()["predictions"] == want, (list(body), r.text[:300])
        r = requests.post(url, data='{"dataframe_records": [{"question": "q", "choices": ["a",',
                          headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 400 and "valid JSON" in r.json()["message"]
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
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=train_run, artifact_path="adapter",
                                                       dst_path=str(tmp_path)))
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

    code = ("import mlflow, sys; m = mlflow.pyfunc.load_model(sys.argv[1]); import jmed; print(jmed.__file__)")
    out = subprocess.run([sys.executable, "-c", code, URI], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith(os.path.join("code", "jmed", "__init__.py")), out.stdout


@pytest.mark.slow
def test_jmed_serve_resolves_the_champion(served, tmp_path):
    import subprocess
    import sys
    import time

    import requests

    from jmed.registry import champion_uri
    from jmed.server import free_port, stop_server

    assert champion_uri() == champion_uri("tiny") == URI
    with pytest.raises(ValueError, match="registered model jmed-other has no 'champion' alias"):
        champion_uri("other")
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "jmed"), "serve", "--port", str(port)],
                            stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
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
        r = requests.post(f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": batch(2)}, timeout=60)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    finally:
        stop_server(proc)


def post(url: str, records: list, params: dict | None = None):
    import requests

    return requests.post(url, json={"dataframe_records": records, "params": {"max_new_tokens": 4, **(params or {})}},
                         timeout=120)


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
    proc, _ = start_server(URI, port, log_path=tmp_path / "serve.log", env={"JMED_SERVE_POLL_S": "0.5"})
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
            {**w, "model_version": "1"} for w in v1.predict(pd.DataFrame(records), params={"max_new_tokens": 4})
            .to_dict("records")]
        assert {p["model_version"] for p in post(url, records[:2], {"alias": "champion"}).json()["predictions"]} == {"2"}
        r = post(url, records[:1], {"version": "9"})
        assert r.status_code == 400 and "version 9 of jmed-tiny is not registered; available: 1, 2" in r.json()["message"]
        r = post(url, records[:1], {"alias": "nightly"})
        assert r.status_code == 400 and "alias 'nightly' is not set on jmed-tiny" in r.json()["message"]

        # 5. a version trained on another revision of the base is refused, naming both
        folder = Path(mlflow.artifacts.download_artifacts(run_id=better, artifact_path="adapter", dst_path=str(tmp_path)))
        meta = json.loads((folder / "jmed.json").read_text())
        (folder / "jmed.json").write_text(json.dumps({**meta, "base_revision": "sha256:" + "0" * 64}))
        with mlflow.start_run():
            info = log_serving_model(folder)
        assert str(mlflow.register_model(info.model_uri, "jmed-tiny").version) == "3"
        r = post(url, records[:1], {"version": "3"})
        assert r.status_code == 400 and "revision sha256:0000" in r.json()["message"], r.text
        assert post(url, records[:1]).status_code == 200  # still serving
    finally:
        stop_server(proc)
    assert proc.poll() is not None and not group_alive(proc.pid)
