"""jmed.batcher: concurrent submits become one engine call; each caller gets exactly its own rows."""

import threading

import pytest

from jmed.batcher import Batcher


class Engine:
    """Records every call; answers each row with (key, row); can be held to let requests pile up."""

    def __init__(self, fail_on=None):
        self.calls, self.gate, self.fail_on = [], threading.Event(), fail_on
        self.entered = threading.Event()  # set when a batch reaches the engine
        self.gate.set()

    def __call__(self, key, rows):
        self.entered.set()
        self.gate.wait(60)
        self.calls.append((key, list(rows)))
        if self.fail_on is not None and self.fail_on in rows:
            raise RuntimeError(f"engine failed on {self.fail_on}")
        return [(key, r) for r in rows]


def submit_all(batcher, jobs):
    """Submit (key, rows) jobs from one thread each; returns results (or exceptions) in job order."""
    out = [None] * len(jobs)

    def one(i, key, rows):
        try:
            out[i] = batcher.submit(key, rows)
        except Exception as exc:  # noqa: BLE001
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i, k, r)) for i, (k, r) in enumerate(jobs)]
    for t in threads:
        t.start()
    return threads, out


def until(condition):
    for _ in range(6000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


def engine_busy(engine):
    """The engine thread has taken the queued job and is held at the gate."""
    assert engine.entered.wait(60)


def test_requests_arriving_during_a_batch_are_answered_together_each_with_its_own_rows():
    engine = Engine()
    batcher = Batcher(engine, max_rows=32, wait_s=0)
    engine.gate.clear()  # the first request occupies the engine while 7 more arrive
    first, first_out = submit_all(batcher, [(("v1",), ["q0"])])
    engine_busy(engine)
    threads, out = submit_all(batcher, [(("v1",), [f"q{i}a", f"q{i}b"]) for i in range(1, 8)])
    until(lambda: len(batcher._queue) == 7)  # all seven queued behind the running batch
    engine.gate.set()
    for t in first + threads:
        t.join(10)
    assert first_out == [[(("v1",), "q0")]]
    assert out == [[(("v1",), f"q{i}a"), (("v1",), f"q{i}b")] for i in range(1, 8)]
    assert [len(rows) for _, rows in engine.calls] == [1, 14]  # the seven became one engine call
    assert (batcher.batches, batcher.rows) == (2, 15)


def test_settings_are_never_mixed_and_a_batch_never_exceeds_max_rows():
    engine = Engine()
    batcher = Batcher(engine, max_rows=4, wait_s=0)
    engine.gate.clear()
    blocker, _ = submit_all(batcher, [(("v1", "letter"), ["x"])])
    engine_busy(engine)
    jobs = [
        (("v1", "letter"), ["a1", "a2"]),
        (("v2", "letter"), ["b1"]),
        (("v1", "loglik"), ["c1"]),
        (("v1", "letter"), ["a3", "a4"]),
        (("v1", "letter"), ["a5"]),
        (("v1", "letter"), list("123456")),
    ]
    threads, out = [], [None] * len(jobs)
    for i, job in enumerate(jobs):  # queued in this order
        ts, o = submit_all(batcher, [job])
        threads += ts
        until(lambda: len(batcher._queue) == i + 1)
        out[i] = o
    engine.gate.set()
    for t in blocker + threads:
        t.join(10)
    assert [o[0] for o in out] == [[(k, r) for r in rows] for k, rows in jobs]
    keys_rows = [(k, rows) for k, rows in engine.calls[1:]]
    assert keys_rows == [
        (("v1", "letter"), ["a1", "a2", "a3", "a4"]),  # same settings, up to max_rows
        (("v2", "letter"), ["b1"]),
        (("v1", "loglik"), ["c1"]),
        (("v1", "letter"), ["a5"]),
        (("v1", "letter"), list("123456")),  # one request larger than max_rows runs alone, never split
    ]


def test_an_engine_error_fails_only_its_own_batch():
    engine = Engine(fail_on="bad")
    batcher = Batcher(engine, max_rows=1, wait_s=0)
    threads, out = submit_all(batcher, [(("k",), ["ok1"]), (("k",), ["bad"]), (("k",), ["ok2"])])
    for t in threads:
        t.join(10)
    assert out[0] == [(("k",), "ok1")] and out[2] == [(("k",), "ok2")]
    assert isinstance(out[1], RuntimeError) and str(out[1]) == "engine failed on bad"
    assert batcher.submit(("k",), ["after"]) == [(("k",), "after")]  # the engine thread lives on


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_rows must be >= 1 and wait_s >= 0"):
        Batcher(Engine(), max_rows=0)


def test_a_request_that_fails_a_shared_batch_fails_alone_the_others_are_answered():
    """Four requests in one engine call, one of which makes the engine raise (a prompt that exhausts
    memory, say): each is run again alone, and only that one fails."""
    engine = Engine(fail_on="huge")
    batcher = Batcher(engine, max_rows=32, wait_s=0)
    engine.gate.clear()
    first, first_out = submit_all(batcher, [(("k",), ["q0"])])
    engine_busy(engine)
    threads, out = submit_all(batcher, [(("k",), [f"q{i}"]) for i in (1, 2)] + [(("k",), ["huge"]), (("k",), ["q3"])])
    until(lambda: len(batcher._queue) == 4)
    engine.gate.set()
    for t in first + threads:
        t.join(10)
    assert first_out == [[(("k",), "q0")]]
    assert out[0] == [(("k",), "q1")] and out[1] == [(("k",), "q2")] and out[3] == [(("k",), "q3")]
    assert isinstance(out[2], RuntimeError) and str(out[2]) == "engine failed on huge"
    shared = [rows for _, rows in engine.calls if len(rows) == 4]
    assert shared == [["q1", "q2", "huge", "q3"]]  # tried together once, then each alone


def test_close_fails_what_is_queued_or_running_and_every_later_submit():
    engine = Engine()
    batcher = Batcher(engine, max_rows=32, wait_s=600)  # a batch that would wait ten minutes for more
    threads, out = submit_all(batcher, [(("k",), ["waiting"])])
    until(lambda: len(batcher._queue) == 1)
    batcher.close("the server is shutting down")
    for t in threads:
        t.join(10)
    assert not threads[0].is_alive()
    assert isinstance(out[0], RuntimeError) and str(out[0]) == "the server is shutting down"
    with pytest.raises(RuntimeError, match="the server is shutting down"):
        batcher.submit(("k",), ["late"])
    assert engine.calls == []
