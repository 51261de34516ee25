"""jmed.engine without a server: how many requests the vllm engine keeps in flight."""

from jmed import engine as E


def test_requests_in_flight_hold_about_the_same_number_of_prompts():
    letters = [((16,), list(range(s, min(s + 16, 400)))) for s in range(0, 400, 16)]  # 25 requests of 16
    assert E.requests_in_flight(letters) == 8  # 128 prompts
    # the text protocol: one request per answer budget, 1-2 prompts each: every request in flight
    text = [((20 + k,), [2 * k, 2 * k + 1] if k % 3 else [2 * k]) for k in range(24)]
    assert E.requests_in_flight(text) == 24
    # many small requests: at most MAX_REQUESTS, about IN_FLIGHT_PROMPTS prompts
    singles = [((k,), [k]) for k in range(500)]
    assert E.requests_in_flight(singles) == E.MAX_REQUESTS == 64
    pairs = [((k,), [2 * k, 2 * k + 1]) for k in range(500)]
    assert E.requests_in_flight(pairs) == 64
    quads = [((k,), list(range(4 * k, 4 * k + 4))) for k in range(500)]
    assert E.requests_in_flight(quads) == 32  # 128 prompts
    echo = list(range(300))  # the echo path: one question per request
    assert E.requests_in_flight(echo) == 64
    assert E.requests_in_flight([]) == 1 and E.requests_in_flight([((1,), [0])]) == 1
