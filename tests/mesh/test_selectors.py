"""Selectors: the grammar, its rejects, matching and covering."""

from __future__ import annotations

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2
from lucid_cp.mesh.selectors import Selector, SelectorError, Workload, parse, single_service

GW = Workload("api-gateway", "api-gateway", "ops")
TRON = Workload("tron-payout", "tron-payment", "wallet")
TRON_OPS = Workload("tron-admin", "admin-interface", "ops")
CHAIN = Workload("blockchain-core", "blockchain-core", "chain")
ALL = (GW, TRON, TRON_OPS, CHAIN)


def matched(text: str) -> list[str]:
    selector = parse(text)
    return [w.name for w in ALL if selector.matches(w)]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("api-gateway", ["api-gateway"]),
        ("*", ["api-gateway", "tron-payout", "tron-admin", "blockchain-core"]),
        ("tron-*", ["tron-payout", "tron-admin"]),
        ("t*", ["tron-payout", "tron-admin"]),
        ("cluster=tron-payment", ["tron-payout"]),
        ("plane=ops", ["api-gateway", "tron-admin"]),
        ("tron-*,plane=ops", ["tron-admin"]),
        (" tron-* , plane=ops ", ["tron-admin"]),
        ("*,cluster=blockchain-core", ["blockchain-core"]),
        ("cluster=api-gateway,plane=ops", ["api-gateway"]),
        ("cluster=api-gateway,plane=wallet", []),
        ("no-such-service", []),
    ],
)
def test_matching(text: str, names: list[str]) -> None:
    assert matched(text) == names


def test_parsed_form() -> None:
    assert parse("tron-*,plane=wallet") == Selector(
        "tron-*,plane=wallet", None, "tron-", {"plane": "wallet"}
    )
    assert parse("*").is_wildcard
    assert not parse("api-gateway").is_wildcard
    assert parse("api-gateway") is parse("api-gateway")  # compiled once


def test_a_workload_without_labels_matches_no_label_selector() -> None:
    assert not parse("plane=ops").matches(Workload("api-gateway"))
    assert parse("api-*").matches(Workload("api-gateway"))


EXPECTED = (
    "expected an exact service name, '*', a prefix glob like 'tron-*', "
    "'cluster=<cluster>' or 'plane=<plane>', joined by commas"
)
CLUSTERS = (
    "admin-interface, api-gateway, authentication, blockchain-core, node-management, "
    "rdp-services, session-management, storage-database, tron-payment"
)
INSIDE = "spaces are allowed only around terms"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", f"empty term in selector ''; {EXPECTED}"),
        ("a,,b", f"empty term in selector 'a,,b'; {EXPECTED}"),
        ("api-gateway,", f"empty term in selector 'api-gateway,'; {EXPECTED}"),
        ("Api-Gateway", f"unknown selector term 'Api-Gateway'; {EXPECTED}"),
        ("ab", f"unknown selector term 'ab'; {EXPECTED}"),  # shorter than a service name
        ("a" * 51, f"unknown selector term '{'a' * 51}'; {EXPECTED}"),
        ("*-gateway", f"unknown selector term '*-gateway'; {EXPECTED}"),
        ("tron-**", f"unknown selector term 'tron-**'; {EXPECTED}"),
        ("tron*x", f"unknown selector term 'tron*x'; {EXPECTED}"),
        ("api_gateway", f"unknown selector term 'api_gateway'; {EXPECTED}"),
        (
            "region=eu",
            "unknown label 'region' in selector 'region=eu'; labels are cluster and plane",
        ),
        (
            "cluster=nowhere",
            f"unknown cluster 'nowhere' in selector 'cluster=nowhere'; one of {CLUSTERS}",
        ),
        ("plane=", "unknown plane '' in selector 'plane='; one of chain, ops, wallet"),
        ("plane=ops,plane=chain", "plane given twice in selector 'plane=ops,plane=chain'"),
        (
            "api-gateway,tron-*",
            "more than one service name term in selector 'api-gateway,tron-*'",
        ),
        ("*,*", "more than one service name term in selector '*,*'"),
        ("a b c", f"space inside term 'a b c' of selector 'a b c'; {INSIDE}"),
        (
            "plane = wallet",
            f"space inside term 'plane = wallet' of selector 'plane = wallet'; {INSIDE}",
        ),
        (
            " plane= wallet",
            f"space inside term 'plane= wallet' of selector ' plane= wallet'; {INSIDE}",
        ),
        ("!api-gateway", f"unknown selector term '!api-gateway'; {EXPECTED}"),
    ],
)
def test_rejects(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as err:
        parse(text)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("api-gateway", "api-gateway"),
        (" api-gateway ", "api-gateway"),
        ("*", "*"),
        (" * ", "*"),
        ("tron-*", "tron-*"),
        (" plane=wallet , tron-* ", "tron-*,plane=wallet"),
        ("plane=ops,cluster=api-gateway,api-gateway", "api-gateway,cluster=api-gateway,plane=ops"),
        ("*,plane=ops", "plane=ops"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert parse(text).canonical == canonical
    assert parse(canonical).key == parse(text).key


def test_a_reject_of_an_unknown_term_lists_what_is_accepted() -> None:
    with pytest.raises(SelectorError, match=r"prefix glob like 'tron-\*'"):
        parse("~x")


@pytest.mark.parametrize(
    ("outer", "inner", "covers"),
    [
        ("*", "api-gateway", True),
        ("*", "plane=ops", True),
        ("tron-*", "tron-payout", True),
        ("tron-*", "tron-pay*", True),
        ("tron-pay*", "tron-*", False),
        ("tron-*", "*", False),
        ("api-gateway", "api-gateway", True),
        ("api-gateway", "api-*", False),
        ("plane=ops", "api-gateway", False),  # its plane is unknown from the terms
        ("plane=ops", "api-gateway,plane=ops", True),
        ("api-*,plane=ops", "api-gateway,plane=ops,cluster=api-gateway", True),
        ("cluster=api-gateway", "plane=ops", False),
    ],
)
def test_covers(outer: str, inner: str, covers: bool) -> None:
    assert parse(outer).covers(parse(inner)) is covers


def test_single_service_targets() -> None:
    assert single_service("blockchain-core") == "blockchain-core"
    assert single_service(" chain-v2 ") == "chain-v2"
    for text in ("*", "tron-*", "plane=ops", "api-gateway,plane=ops"):
        with pytest.raises(SelectorError, match="must name one service exactly"):
            single_service(text)
    with pytest.raises(SelectorError, match="unknown selector term"):
        single_service("http://elsewhere")


def test_workload_from_proto_uses_wire_strings() -> None:
    w = mesh_pb2.Workload(
        name="tron-payout",
        cluster=discovery_pb2.CLUSTER_TRON_PAYMENT,
        plane=discovery_pb2.PLANE_WALLET,
    )
    assert Workload.from_proto(w) == TRON
    assert Workload.from_proto(mesh_pb2.Workload(name="x-y")).labels == {}
