"""Issue 11, load without leaks (short): 200 users, 10 s, 2 workers; no
request may carry another user's exchanged token, and none may fail."""

from load import measure


def test_two_hundred_users_never_mixed_up():
    r = measure(users=200, seconds=10)
    print(r)
    assert r["requests"] > 1000
    assert r["mismatches"] == 0
    assert r["5xx"] == 0 and r["other"] == 0 and r["timeouts"] == 0
    assert r["idp_exchange_calls"] <= 2 * 200, "about one exchange per user (one per worker at most)"
