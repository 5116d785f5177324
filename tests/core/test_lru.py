"""The one thread-safe LRU (cachetools.LRUCache behind a lock)."""
import threading

from analysis.core.lru import LockedLRU


def test_least_recently_used_goes_first_and_reads_count_as_use():
    c = LockedLRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1          # "a" is now the most recent
    c.put("c", 3)                   # evicts "b"
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3
    assert c.get("b") is None and c.get("b", 7) == 7
    assert len(c) == 2
    c.clear()
    assert len(c) == 0


def test_find_returns_most_recent_match_and_keeps_the_order():
    c = LockedLRU(3)
    c.put(("x", 1), "one")
    c.put(("x", 2), "two")
    c.put(("y", 3), "three")
    assert c.find(lambda k, v: k[0] == "x") == (("x", 2), "two")
    assert c.find(lambda k, v: k[0] == "z") is None
    c.get(("x", 1))
    assert c.find(lambda k, v: k[0] == "x") == (("x", 1), "one")
    # the search itself did not reshuffle the order: ("y", 3) is now the oldest
    c.put(("z", 4), "four")
    assert ("y", 3) not in c and ("x", 1) in c and ("x", 2) in c


def test_get_or_compute_caches_values_but_not_none():
    c = LockedLRU(4)
    calls = []
    assert c.get_or_compute("k", lambda: calls.append(1) or "v") == "v"
    assert c.get_or_compute("k", lambda: calls.append(1) or "w") == "v"
    assert calls == [1]
    assert c.get_or_compute("n", lambda: None) is None and "n" not in c


def test_concurrent_use_keeps_the_bound_and_loses_no_value():
    c = LockedLRU(8)
    errors = []

    def work(t):
        try:
            for i in range(2000):
                key = (t, i % 16)
                v = c.get_or_compute(key, lambda key=key: key[0] * 100 + key[1])
                assert v == t * 100 + i % 16
                c.find(lambda k, v: k[0] == t)
                assert len(c) <= 8
        except Exception as e:  # noqa: BLE001 (collected for the main thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
