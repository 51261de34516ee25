"""The served model: input checks, then a real `mlflow models serve` process answering HTTP requests."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jmed.serving import check_inputs, check_params

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

    assert check_params(None, "letter") == ("letter", 32)
    assert check_params({"protocol": "loglik", "max_new_tokens": 4}, "letter") == ("loglik", 4)
    for params, message in [({"protocol": "vote"}, "param 'protocol' is 'vote'"),
                            ({"max_new_tokens": 0}, "param 'max_new_tokens' is 0"),
                            ({"temperature": 1}, "unknown param(s): temperature")]:
        with pytest.raises(MlflowException, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_params(params, "letter")
