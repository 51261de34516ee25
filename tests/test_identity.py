"""Data identity a person can read (jmed/identity.py): a digest is always shown with a name and a count,
and tables say when their rows were measured on different data."""

from jmed import identity as I


def test_data_names():
    assert I.data_name("../shared/datasets/igakuqa/data/2022") == "igakuqa 2022"
    assert I.data_name("/work/main/jmed/sample/test.jsonl") == "sample test"
    assert I.data_name("../shared/datasets/jmle2026/questions.json") == "jmle2026 questions"
    assert I.data_name("q.jsonl") == "q"


def test_evaluation_label_shows_name_count_selection_and_digest():
    params = {
        "eval_data_path": "../shared/datasets/igakuqa/data/2022",
        "eval_data_digest": "7414a6aa1553" + "0" * 52,
        "questions": "20",
        "eval_data_total": "400",
        "limit": "20",
        "sample": "0",
        "filters.years": "",
        "filters.text_only": "False",
        "protocol": "letter",
        "prompt_format": "igakuqa",
        "shots": "0",
        "engine": "vllm",
    }
    assert I.evaluation_data(params) == "igakuqa 2022, 20 of 400 questions (limit 20), 7414a6aa1553"
    assert I.evaluation_label(params).endswith("; letter, igakuqa, 0-shot, vllm")
    # every question of the data, filters that changed nothing, and a run from before eval_data_total
    whole = {**params, "limit": "0", "questions": "400", "filters.five_choices": "True"}
    assert I.evaluation_data(whole) == "igakuqa 2022, 400 questions (five choices), 7414a6aa1553"
    old = {k: v for k, v in params.items() if k != "eval_data_total"}
    assert I.evaluation_data(old) == "igakuqa 2022, 20 questions (limit 20), 7414a6aa1553"


def test_compare_marks_rows_on_different_data():
    from jmed.study import caveat, to_markdown

    rows = [
        {"base_model": "tiny", "eval_data_digest": "a" * 12, "data": "sample test, 20 questions, aaaaaaaaaaaa"},
        {
            "base_model": "tiny",
            "eval_data_digest": "b" * 12,
            "data": "igakuqa 2022, 20 of 400 questions (limit 20), bbbbbbbbbbbb",
        },
    ]
    text = to_markdown(rows)
    assert "| sample test, 20 questions, aaaaaaaaaaaa |" in text
    assert "| igakuqa 2022, 20 of 400 questions (limit 20), bbbbbbbbbbbb |" in text
    assert text.rstrip().endswith(caveat(rows).rstrip()) and "2 different evaluation data" in text
    assert caveat(rows[:1]) == ""


def test_validate_says_what_its_digest_covers(tmp_path):
    from jmed import checks, data

    report = checks.validate([str(data.SAMPLE_TRAIN)], against=[str(data.SAMPLE_TEST)])
    lines = report.summary().splitlines()
    digest = data.digest(data.read_dataset(str(data.SAMPLE_TEST)).items)[:12]
    assert f"  against: sample test, 20 records, {digest} (igakuqa, every record of {data.SAMPLE_TEST})" in lines


def test_promote_reasons_name_the_data():
    from jmed.registry.decision import Candidate, Champion, decide

    ev_a, ev_b = ("a" * 64, "letter", "igakuqa", "0", "hf"), ("b" * 64, "letter", "igakuqa", "0", "hf")
    champ = Champion("1", "e1", "t1", ev_a, 0.5)
    cands = [
        Candidate("e1", "t1", ev_a, 0.5, data="sample test, 20 questions, aaaaaaaaaaaa"),
        Candidate("e2", "t2", ev_b, 0.9, data="igakuqa 2022, 20 of 400 questions (limit 20), bbbbbbbbbbbb"),
    ]
    reasons = " ".join(decide(cands, champ).reasons)
    assert (
        "(data sample test, 20 questions, aaaaaaaaaaaa, protocol letter, format igakuqa, shots 0, engine hf)" in reasons
    )
