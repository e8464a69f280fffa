"""(1) Queue throughput: send -> Consume -> ack end to end, on etcd and on sqlite (our default
store), against raw aetcd puts to the same etcd at the same concurrency.

Raw: ``concurrency`` tasks putting a value the size of our request, closed loop, in a client
process of their own. Ours: the same tasks calling SendMessage (one client process), one Consume
stream in another process acking every delivery as it arrives (maxInFlight from the plan); the
rate is messages / (first send of the measured run -> last of them delivered to the consumer).
"""

from __future__ import annotations

import asyncio
from typing import Any

from scripts.bench.children import Child, ask
from scripts.bench.messaging_common import (
    MessagingBench,
    Plan,
    Window,
    cores,
    request_bytes,
)
from scripts.bench.report import Row, fmt, fmt_ratio, met

TARGET = 0.5  # ours >= 0.5x raw etcd puts


async def run(bench: MessagingBench) -> None:
    results: dict[str, Any] = {"raw_etcd": await _raw_etcd(bench)}
    bench.results["throughput"] = results
    for store in bench.plan.stores:
        results[store] = await _ours(bench, store)


async def _raw_etcd(bench: MessagingBench) -> dict[str, Any]:
    p = bench.plan
    etcd = bench.etcd()
    spec = {"kind": "etcd", "port": etcd.client_port, "concurrency": p.concurrency}
    sender = bench.start_role("tp-raw-etcd", "send", spec)
    try:
        await ask(sender, f"run {p.warmup}")
        window = Window({"etcd": bench.etcd_pid(), "client": sender.pid})
        result = await ask(sender, f"run {p.raw_puts}")
        return {**result, **window.close()}
    finally:
        bench.children.stop(sender)


async def _ours(bench: MessagingBench, store: str) -> dict[str, Any]:
    p = bench.plan
    cp = bench.start_cp(f"cp-throughput-{store}", store)
    roles = []
    try:
        consumer_spec, sender_spec = bench.queue_specs(
            cp, f"throughput-{store}", concurrency=p.concurrency
        )
        consumer = bench.start_role(f"tp-consumer-{store}", "consume", consumer_spec)
        roles.append(consumer)
        sender = bench.start_role(f"tp-sender-{store}", "send", sender_spec)
        roles.append(sender)
        warmed = await ask(sender, f"run {p.warmup}")
        await ask(consumer, f"wait {warmed['done']} 60")
        window = Window(
            {**bench.server_pids(cp, store), "sender": sender.pid, "consumer": consumer.pid}
        )
        sent = await ask(sender, f"run {p.messages}")
        got = await ask(consumer, f"wait {warmed['done'] + sent['done']} 120")
        cpu = window.close()
        complete = got["fewest"] >= warmed["done"] + sent["done"]
        seconds = (got["last_arrival_ns"] - sent["start_ns"]) / 1e9
        delivered = await _delivered(bench, cp, sent["sample_ids"])
        return {
            "send": sent,
            "consume": got,
            "complete": complete,
            "per_s": sent["done"] / seconds if complete and seconds > 0 else None,
            "seconds": seconds,
            "sample_delivered": delivered,
            **cpu,
        }
    finally:
        for role in roles:
            bench.children.stop(role)
        bench.stop_cp(cp)


async def _delivered(bench: MessagingBench, cp: Child, ids: list[str]) -> list[int]:
    """(delivered, checked) among the last messages sent, read back with GetMessageStatus: the
    acks were applied, not only sent (up to 5 s for the last acks to land)."""
    delivered = 0
    for _ in range(50):
        delivered = (await bench.states(cp, ids)).get("MESSAGE_STATE_DELIVERED", 0)
        if delivered == len(ids):
            break
        await asyncio.sleep(0.1)
    return [delivered, len(ids)]


def report(results: dict[str, Any], plan: Plan, rows: list[Row], notes: list[str]) -> None:
    t = results.get("throughput")
    if not t:
        return
    raw = t["raw_etcd"]
    for store in plan.stores:
        ours = t.get(store)
        if not ours:
            continue
        text, ratio = fmt_ratio(ours["per_s"], raw["per_s"])
        clean = (
            ours["complete"]
            and ours["send"]["errors"] == 0
            and ours["consume"]["duplicates"] == 0
            and ours["sample_delivered"][0] == ours["sample_delivered"][1]
        )
        rows.append(
            Row(
                f"(1) send→consume→ack on {store}, {plan.concurrency} senders (msg/s)",
                fmt(ours["per_s"], digits=0),
                fmt(raw["per_s"], digits=0) + " (raw etcd put)",
                text,
                f">= {TARGET}x",
                met(ratio >= TARGET if ratio is not None and clean else None),
            )
        )
        send = ours["send"]
        text, _ = fmt_ratio(send["p99_ms"], raw["p99_ms"])
        rows.append(
            Row(
                f"(1) {store}: SendMessage p50 / p99 vs put (ms)",
                f"{fmt(send['p50_ms'], digits=2)} / {fmt(send['p99_ms'], digits=2)}",
                f"{fmt(raw['p50_ms'], digits=2)} / {fmt(raw['p99_ms'], digits=2)}",
                text,
                "info",
                "-",
            )
        )
        cp_cpu = ours["cpu_s"]["cp"]
        rows.append(
            Row(
                f"(1) {store}: control-plane CPU per message (µs), cores busy",
                f"{fmt(cp_cpu / max(1, ours['send']['done']) * 1e6, digits=0)}, "
                f"{fmt(ours['cpu_util']['cp'], digits=2)}",
                "-",
                "-",
                "info",
                "-",
            )
        )
    notes.append(
        f"(1) closed loop, {plan.concurrency} concurrent tasks in one client process; raw: "
        f"{plan.raw_puts} aetcd puts of a {request_bytes()}-byte value after {plan.warmup} "
        f"warm-up puts; ours: {plan.messages} SendMessage after {plan.warmup} warm-up messages, "
        f"one Consume stream (maxInFlight {plan.max_in_flight}) in another process acking each "
        "delivery at once; rate = messages / (first send -> last delivery at the consumer). "
        "Per message the queue writes 3 txns (create-only send, CAS claim, CAS ack). "
        + "; ".join(_detail(store, t[store], plan) for store in plan.stores if t.get(store))
        + f"; raw etcd: {raw['done']} puts, {raw['errors']} errors, etcd CPU "
        f"{fmt(raw['cpu_util']['etcd'], digits=2)} cores."
    )


def _detail(store: str, ours: dict[str, Any], plan: Plan) -> str:
    return (
        f"{store}: sends alone ran at {ours['send']['per_s']:,.0f}/s, "
        f"{ours['consume']['received']} delivered ({ours['consume']['duplicates']} redelivered), "
        f"{ours['send']['errors']} send errors, last {ours['sample_delivered'][1]} read back "
        f"delivered: {ours['sample_delivered'][0]}; cores busy: {cores(ours)}"
    )
