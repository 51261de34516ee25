"""Promotion: the pure decision (table-driven), then the real registry on a real sqlite store."""
import pytest

from jmed.registry import Candidate, Champion, decide

E1 = ("d1", "letter", "igakuqa", "0")
E2 = ("d2", "letter", "igakuqa", "0")


def cand(run, train, metric, secondary=None, t=0, evaluation=E1, version=None):
    return Candidate(run, train, evaluation, metric, secondary, t, version)


def champ(version, run, train, metric, evaluation=E1):
    return Champion(version, run, train, evaluation, metric)


# (name, candidates, champion, min_delta, expected action, expected candidate eval run, register, reason part)
CASES = [
    ("nothing", [], None, 0, "none", None, False, "no evaluated adapter"),
    ("no metric", [cand("e1", "t1", None)], None, 0, "none", None, False, "without metric"),
    ("first champion", [cand("e1", "t1", 0.4), cand("e2", "t2", 0.6)], None, 0,
     "promote", "e2", True, "no champion yet"),
    ("first champion already registered", [cand("e1", "t1", 0.6, version="3")], None, 0,
     "promote", "e1", False, "no champion yet"),
    ("tie -> secondary", [cand("e1", "t1", 0.5, 0.7, t=2), cand("e2", "t2", 0.5, 0.8, t=1)], None, 0,
     "promote", "e2", True, "tie"),
    ("tie on both -> newer", [cand("e1", "t1", 0.5, 0.7, t=1), cand("e2", "t2", 0.5, 0.7, t=2)], None, 0,
     "promote", "e2", True, "tie"),
    ("no champion: newest evaluation wins the comparison set",
     [cand("e1", "t1", 0.9, t=1, evaluation=E2), cand("e2", "t2", 0.3, t=5)], None, 0,
     "promote", "e2", True, "another evaluation"),
    ("better candidate", [cand("e1", "t1", 0.4), cand("e2", "t2", 0.6)], champ("1", "e1", "t1", 0.4), 0,
     "promote", "e2", True, "beats champion v1"),
    ("champion already best (idempotent)", [cand("e1", "t1", 0.6, version="1"), cand("e2", "t2", 0.4)],
     champ("1", "e1", "t1", 0.6), 0, "keep", "e1", False, "already the best"),
    ("equal metric does not move", [cand("e1", "t1", 0.6, 0.1), cand("e2", "t2", 0.6, 0.9)],
     champ("1", "e1", "t1", 0.6), 0, "keep", "e2", True, "does not beat"),
    ("within min_delta", [cand("e1", "t1", 0.5), cand("e2", "t2", 0.55)], champ("1", "e1", "t1", 0.5), 0.1,
     "keep", "e2", True, "min_delta 0.1"),
    ("beyond min_delta", [cand("e1", "t1", 0.5), cand("e2", "t2", 0.65)], champ("1", "e1", "t1", 0.5), 0.1,
     "promote", "e2", True, "> min_delta 0.1"),
    ("worse registered candidate", [cand("e2", "t2", 0.3, version="2")], champ("1", "e1", "t1", 0.5), 0,
     "keep", "e2", False, "does not beat"),
    ("champion on other evaluation: not compared blindly", [cand("e2", "t2", 0.99, evaluation=E2)],
     champ("1", "e1", "t1", 0.1), 0, "keep", None, False, "not compared blindly"),
    ("other-evaluation candidates ignored",
     [cand("e2", "t2", 0.99, evaluation=E2), cand("e3", "t3", 0.2)], champ("1", "e1", "t1", 0.3), 0,
     "keep", "e3", True, "1 candidate(s) evaluated on another evaluation"),
    ("registered candidate promoted without re-registering", [cand("e2", "t2", 0.8, version="2")],
     champ("1", "e1", "t1", 0.5), 0, "promote", "e2", False, "beats champion v1"),
]


@pytest.mark.parametrize("name,cands,champion,min_delta,action,run,register,reason", CASES,
                         ids=[c[0] for c in CASES])
def test_decide(name, cands, champion, min_delta, action, run, register, reason):
    d = decide(cands, champion, "eval/accuracy", min_delta)
    assert d.action == action
    assert (d.candidate.eval_run if d.candidate else None) == run
    assert d.register is register
    assert any(reason in r for r in d.reasons), d.reasons
    assert d == decide(list(reversed(cands)), champion, "eval/accuracy", min_delta)  # order-free, pure
