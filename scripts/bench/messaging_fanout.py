"""(3) Event fan-out: one publisher (PublishEvent, open loop at ``fan_rate``/s), 1, 10 and 100
subscribers, each a pull subscription read through its own StreamEvents stream on its own
connection; latency = arrival at each subscriber - the publish's scheduled time, pooled over
every subscriber. References: NATS JetStream (one ordered push consumer per subscriber, from the
next message on) and NATS core subscriptions, same subscriber counts and processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lucid_cp.api.lucid.messaging.v1 import delivery_pb2, events_pb2_grpc
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as epb
from scripts.bench.children import Child, ask
from scripts.bench.messaging_common import (
    EVENT_TYPE,
    RPC_TIMEOUT,
    SENDER,
    SUBSCRIBER,
    MessagingBench,
    Plan,
    Window,
    cores,
    measured,
)
from scripts.bench.report import Row, fmt, fmt_ratio, met

TARGET_P99_MS = 50.0  # at 100 subscribers
TARGET_SIZE = 100
WARMUP_S = 1.0
NATS_KINDS = {"nats-js": "NATS JetStream", "nats-core": "NATS core"}


async def run(bench: MessagingBench) -> None:
    results: dict[str, Any] = {}
    bench.results["fanout"] = results
    for store in bench.plan.fan_stores:
        results[store] = await _ours(bench, store)
    if bench.nats_skip is None:
        for kind in NATS_KINDS:
            results[kind] = await _nats(bench, kind)


def _groups(bench: MessagingBench, items: list[Any]) -> list[list[Any]]:
    """Subscribers per client process: one process up to 10, else ``fan_processes``."""
    processes = 1 if len(items) <= 10 else bench.plan.fan_processes
    return [items[k::processes] for k in range(processes)]


async def _ours(bench: MessagingBench, store: str) -> dict[str, Any]:
    p = bench.plan
    cp = bench.start_cp(f"cp-fanout-{store}", store)
    out: dict[str, Any] = {}
    publisher: Child | None = None
    try:
        target = bench.target(cp)
        publisher = bench.start_role(
            f"fan-{store}-publisher",
            "send",
            {"kind": "event", "target": target, "token": bench.token(SENDER), "rate": p.fan_rate},
        )
        pids = bench.server_pids(cp, store)
        for n in p.fan_sizes:
            ids = await _subscribe(bench, cp, n)
            subscribers: list[Child] = []
            try:
                for k, group in enumerate(_groups(bench, ids)):
                    spec = {
                        "kind": "ours",
                        "target": target,
                        "token": bench.token(SUBSCRIBER),
                        "subscriptions": group,
                    }
                    subscribers.append(bench.start_role(f"fan-{store}-{n}-{k}", "subscribe", spec))
                out[str(n)] = await _measure(bench, publisher, subscribers, n, pids)
            finally:
                for child in subscribers:
                    bench.children.stop(child)
    finally:
        if publisher is not None:
            bench.children.stop(publisher)
        bench.stop_cp(cp)
    return out


async def _subscribe(bench: MessagingBench, cp: Child, n: int) -> list[str]:
    """n pull subscriptions of the subscriber service to the benchmark's event type."""
    subscription = epb.EventSubscription(
        event_types=[EVENT_TYPE], delivery_mode=delivery_pb2.DELIVERY_MODE_PULL
    )
    md = bench.md(SUBSCRIBER)
    async with bench.channel(cp) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)
        ids = []
        for _ in range(n):
            response = await stub.Subscribe(
                epb.SubscribeRequest(subscription=subscription), metadata=md, timeout=RPC_TIMEOUT
            )
            ids.append(response.subscription_id)
    return ids


async def _nats(bench: MessagingBench, kind: str) -> dict[str, Any]:
    p = bench.plan
    server = bench.nats()
    url = f"nats://{bench.target(server)}"
    out: dict[str, Any] = {}
    for n in p.fan_sizes:
        label = f"{kind.replace('-', '')}{n}"
        step = {"url": url, "kind": kind, "stream": f"FAN_{label}", "subject": f"{label}.tick"}
        children: list[Child] = []
        try:
            for k, group in enumerate(_groups(bench, list(range(n)))):
                spec = {**step, "count": len(group)}
                children.append(bench.start_role(f"fan-{kind}-{n}-{k}", "subscribe", spec))
            subscribers = list(children)
            publisher = bench.start_role(
                f"fan-{kind}-{n}-publisher", "send", {**step, "rate": p.fan_rate}
            )
            children.append(publisher)
            out[str(n)] = await _measure(bench, publisher, subscribers, n, {"nats": server.pid})
        finally:
            for child in children:
                bench.children.stop(child)
    return out


async def _measure(
    bench: MessagingBench,
    publisher: Child,
    subscribers: list[Child],
    n: int,
    server_pids: dict[str, int],
) -> dict[str, Any]:
    p = bench.plan
    warm = int(p.fan_rate * WARMUP_S)
    count = int(p.fan_rate * p.fan_seconds)
    warmed = await ask(publisher, f"run {warm}")
    await asyncio.gather(*(ask(s, f"wait {warmed['done']} 30") for s in subscribers))
    pids = {**server_pids, "publisher": publisher.pid}
    pids |= {f"subscribers-{k}": s.pid for k, s in enumerate(subscribers)}
    window = Window(pids)
    sent = await ask(publisher, f"run {count}")
    await asyncio.gather(
        *(ask(s, f"wait {warmed['done'] + sent['done']} {10 + p.fan_seconds}") for s in subscribers)
    )
    cpu = window.close()
    dumps = [await bench.dump(s) for s in subscribers]
    latency = measured(dumps, sent["start_ns"], n, sent["done"])
    return {"publish": sent, "latency": latency, **cpu}


def report(results: dict[str, Any], plan: Plan, rows: list[Row], notes: list[str]) -> None:
    fan = results.get("fanout")
    if not fan:
        return
    base = fan.get("nats-js", {})
    for store in plan.fan_stores:
        for n in plan.fan_sizes:
            ours = fan.get(store, {}).get(str(n))
            if not ours:
                continue
            mine = ours["latency"]
            ref = base.get(str(n))
            text, _ = fmt_ratio(mine["p99_ms"], ref["latency"]["p99_ms"] if ref else None)
            judged = n == TARGET_SIZE
            clean = mine["missing"] == 0 and ours["publish"]["errors"] == 0
            rows.append(
                Row(
                    f"(3) fan-out to {n} on {store}: publish→arrival p50 / p99 (ms)",
                    f"{fmt(mine['p50_ms'], digits=2)} / {fmt(mine['p99_ms'], digits=2)}",
                    _pair(ref, "NATS JetStream"),
                    text,
                    f"p99 <= {TARGET_P99_MS:.0f} ms" if judged else "info",
                    met(mine["p99_ms"] <= TARGET_P99_MS if clean else False) if judged else "-",
                )
            )
    core = fan.get("nats-core", {})
    for n in plan.fan_sizes:
        if str(n) in core:
            rows.append(
                Row(
                    f"(3) fan-out to {n}: NATS core reference p50 / p99 (ms)",
                    "-",
                    _pair(core[str(n)], "NATS core"),
                    "-",
                    "info",
                    "-",
                )
            )
    for store in plan.fan_stores:
        big = fan.get(store, {}).get(str(max(plan.fan_sizes)))
        if big:
            n = max(plan.fan_sizes)
            delivered = big["latency"]["n"]
            rows.append(
                Row(
                    f"(3) {store}, {n} subscribers: control-plane CPU per delivered event (µs), "
                    "cores busy",
                    f"{fmt(big['cpu_s']['cp'] / delivered * 1e6, digits=0)}, "
                    f"{fmt(big['cpu_util']['cp'], digits=2)}",
                    _nats_cpu(base.get(str(n))),
                    "-",
                    "info",
                    "-",
                )
            )
    parts = []
    for key in (*plan.fan_stores, *NATS_KINDS):
        for n, r in fan.get(key, {}).items():
            m = r["latency"]
            parts.append(
                f"{key}/{n}: max {fmt(m['max_ms'], digits=1)} ms, {m['missing']} of "
                f"{m['expected']} missing, publish ack p99 {fmt(r['publish']['p99_ms'], digits=2)} ms"
                f", {r['publish']['errors']} errors; cores busy: {cores(r)}"
            )
    notes.append(
        f"(3) {plan.fan_rate:g} events/s for {plan.fan_seconds:g} s after a {WARMUP_S:g} s "
        "warm-up, open loop; every subscriber on its own connection; up to 10 subscribers in one "
        f"client process, more split over {plan.fan_processes}. Our subscribers do not ack "
        "(StreamEvents does not need it); the NATS JetStream ones are ordered consumers (no acks "
        "either). " + "; ".join(parts) + "."
    )


def _pair(r: dict[str, Any] | None, label: str) -> str:
    if not r:
        return "n/a"
    m = r["latency"]
    return f"{fmt(m['p50_ms'], digits=2)} / {fmt(m['p99_ms'], digits=2)} ({label})"


def _nats_cpu(r: dict[str, Any] | None) -> str:
    if not r:
        return "n/a"
    return (
        f"{fmt(r['cpu_s']['nats'] / r['latency']['n'] * 1e6, digits=0)}, "
        f"{fmt(r['cpu_util']['nats'], digits=2)} (nats-server, JetStream)"
    )
