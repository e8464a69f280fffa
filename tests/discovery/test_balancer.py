"""Balancer: every load-balancing algorithm, pure (a seeded RNG, no servers)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.discovery.balancer import Balancer

ALGORITHMS = [v.number for v in pb.LoadBalance.DESCRIPTOR.values]


def instances(*ids: str, weight: int = 100) -> list[pb.ServiceInstance]:
    return [pb.ServiceInstance(service_id=i, weight=weight) for i in ids]


def ids(picked: list[pb.ServiceInstance | None]) -> list[str]:
    return [p.service_id if p is not None else "-" for p in picked]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_candidates_picks_nothing(algorithm: int) -> None:
    # Even consistent-hash without a hash key: there is nothing to choose from.
    assert Balancer(random.Random(0)).pick(algorithm, [], cursor_key="svc") is None


# --- round-robin --------------------------------------------------------------------------------


def test_round_robin_cycles_in_candidate_order() -> None:
    b = Balancer()
    cands = instances("a", "b", "c")
    picks = [b.pick(pb.LOAD_BALANCE_ROUND_ROBIN, cands, cursor_key="svc") for _ in range(7)]
    assert ids(picks) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_cursors_are_per_key() -> None:
    b = Balancer()
    cands = instances("a", "b", "c")
    rr = pb.LOAD_BALANCE_ROUND_ROBIN
    assert ids([b.pick(rr, cands, cursor_key="one"), b.pick(rr, cands, cursor_key="one")]) == [
        "a",
        "b",
    ]
    assert ids([b.pick(rr, cands, cursor_key="two")]) == ["a"]  # untouched by "one"
    assert ids([b.pick(rr, cands, cursor_key="one")]) == ["c"]


def test_round_robin_cursors_are_per_balancer() -> None:
    cands = instances("a", "b")
    first, second = Balancer(), Balancer()
    first.pick(pb.LOAD_BALANCE_ROUND_ROBIN, cands, cursor_key="svc")
    assert second.pick(pb.LOAD_BALANCE_ROUND_ROBIN, cands, cursor_key="svc") is cands[0]


def test_round_robin_survives_a_shrinking_candidate_list() -> None:
    b = Balancer()
    rr = pb.LOAD_BALANCE_ROUND_ROBIN
    for _ in range(5):
        b.pick(rr, instances("a", "b", "c", "d", "e", "f"), cursor_key="svc")
    picks = [b.pick(rr, instances("a", "b"), cursor_key="svc") for _ in range(4)]
    assert sorted(ids(picks)) == ["a", "a", "b", "b"]  # still alternating, never out of range


def test_unspecified_algorithm_is_round_robin() -> None:
    b = Balancer()
    cands = instances("a", "b")
    picks = [b.pick(pb.LOAD_BALANCE_UNSPECIFIED, cands, cursor_key="svc") for _ in range(3)]
    assert ids(picks) == ["a", "b", "a"]


# --- least-connections ----------------------------------------------------------------------------


def test_least_connections_picks_the_least_loaded() -> None:
    b = Balancer()
    load = {"a": 7, "b": 2, "c": 5}
    picks = [
        b.pick(
            pb.LOAD_BALANCE_LEAST_CONNECTIONS,
            instances("a", "b", "c"),
            cursor_key="svc",
            connections=load.__getitem__,
        )
        for _ in range(3)
    ]
    assert ids(picks) == ["b", "b", "b"]


def test_least_connections_ties_rotate_among_the_least_loaded_only() -> None:
    b = Balancer()
    load = {"a": 3, "b": 0, "c": 9, "d": 0}
    picks = [
        b.pick(
            pb.LOAD_BALANCE_LEAST_CONNECTIONS,
            instances("a", "b", "c", "d"),
            cursor_key="svc",
            connections=load.__getitem__,
        )
        for _ in range(4)
    ]
    assert ids(picks) == ["b", "d", "b", "d"]


def test_least_connections_follows_changing_load() -> None:
    b = Balancer()
    load = {"a": 0, "b": 1}
    cands = instances("a", "b")
    lc = pb.LOAD_BALANCE_LEAST_CONNECTIONS
    assert b.pick(lc, cands, cursor_key="svc", connections=load.__getitem__) is cands[0]
    load["a"] = 2
    assert b.pick(lc, cands, cursor_key="svc", connections=load.__getitem__) is cands[1]


def test_least_connections_without_load_reports_is_round_robin() -> None:
    b = Balancer()
    cands = instances("a", "b", "c")
    picks = [b.pick(pb.LOAD_BALANCE_LEAST_CONNECTIONS, cands, cursor_key="svc") for _ in range(4)]
    assert ids(picks) == ["a", "b", "c", "a"]


# --- random -------------------------------------------------------------------------------------


def test_random_stays_within_candidates_and_reaches_each() -> None:
    b = Balancer(random.Random(1234))
    cands = instances("a", "b", "c")
    picks = Counter(
        ids([b.pick(pb.LOAD_BALANCE_RANDOM, cands, cursor_key="svc") for _ in range(3000)])
    )
    assert set(picks) == {"a", "b", "c"}
    assert all(800 < n < 1200 for n in picks.values()), picks


def test_random_uses_the_injected_rng() -> None:
    cands = instances(*"abcdefgh")

    def run(seed: int) -> list[str]:
        b = Balancer(random.Random(seed))
        return ids([b.pick(pb.LOAD_BALANCE_RANDOM, cands, cursor_key="svc") for _ in range(20)])

    assert run(7) == run(7)
    assert run(7) != run(8)


# --- weighted -----------------------------------------------------------------------------------


def test_weighted_picks_in_proportion_to_weight() -> None:
    b = Balancer(random.Random(42))
    cands = [
        pb.ServiceInstance(service_id="light", weight=100),
        pb.ServiceInstance(service_id="heavy", weight=300),
        pb.ServiceInstance(service_id="off", weight=0),
    ]
    n = 20_000
    picks = Counter(
        ids([b.pick(pb.LOAD_BALANCE_WEIGHTED, cands, cursor_key="s") for _ in range(n)])
    )
    assert "off" not in picks  # weight 0 is never picked
    assert picks["heavy"] / n == pytest.approx(0.75, abs=0.02)
    assert picks["light"] / n == pytest.approx(0.25, abs=0.02)


def test_weighted_with_every_weight_zero_picks_nothing() -> None:
    b = Balancer(random.Random(0))
    assert b.pick(pb.LOAD_BALANCE_WEIGHTED, instances("a", "b", weight=0), cursor_key="s") is None


def test_weighted_single_positive_weight_always_wins() -> None:
    b = Balancer(random.Random(0))
    cands = [
        pb.ServiceInstance(service_id="a", weight=0),
        pb.ServiceInstance(service_id="b", weight=1),
    ]
    assert set(
        ids([b.pick(pb.LOAD_BALANCE_WEIGHTED, cands, cursor_key="s") for _ in range(50)])
    ) == {"b"}


# --- consistent-hash ----------------------------------------------------------------------------

KEYS = [f"user-{i}" for i in range(2000)]


def owners(b: Balancer, cands: list[pb.ServiceInstance]) -> dict[str, str]:
    out = {}
    for key in KEYS:
        picked = b.pick(pb.LOAD_BALANCE_CONSISTENT_HASH, cands, cursor_key="s", hash_key=key)
        assert picked is not None
        out[key] = picked.service_id
    return out


def test_consistent_hash_is_stable_across_calls_balancers_and_candidate_order() -> None:
    cands = instances("a", "b", "c", "d")
    first = owners(Balancer(), cands)
    assert owners(Balancer(), cands) == first
    assert owners(Balancer(), list(reversed(cands))) == first


def test_consistent_hash_spreads_keys_over_every_instance() -> None:
    spread = Counter(owners(Balancer(), instances("a", "b", "c", "d")).values())
    assert set(spread) == {"a", "b", "c", "d"}
    assert all(350 < n < 650 for n in spread.values()), spread


def test_adding_an_instance_moves_keys_only_to_it() -> None:
    before = owners(Balancer(), instances("a", "b", "c", "d"))
    after = owners(Balancer(), instances("a", "b", "c", "d", "e"))
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved, "a new instance should take some keys"
    assert {after[k] for k in moved} == {"e"}
    assert len(moved) / len(KEYS) == pytest.approx(1 / 5, abs=0.05)


def test_removing_an_instance_moves_only_its_keys() -> None:
    before = owners(Balancer(), instances("a", "b", "c", "d"))
    after = owners(Balancer(), instances("a", "b", "d"))
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "c"}


def test_consistent_hash_without_a_key_is_a_bug_caught_by_an_assertion() -> None:
    # Requests never get here without one: validation enforces ResolveRequest's message rule.
    with pytest.raises(AssertionError):
        Balancer().pick(pb.LOAD_BALANCE_CONSISTENT_HASH, instances("a"), cursor_key="s")
