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
    p = bench.plan
    results: dict[str, Any] = {"raw_etcd": await _raw_etcd(bench, p.concurrency, 1, p.raw_puts)}
    bench.results["throughput"] = results
    results["raw_etcd_batch"] = await _raw_etcd(
        bench, p.batch_concurrency, p.batch, p.batch_messages
    )
    for store in bench.plan.stores:
        results[store] = await _ours(bench, store, concurrency=p.concurrency, n=p.messages)
        results[f"{store}-batch"] = await _ours(
            bench,
            store,
            concurrency=p.batch_concurrency,
            n=p.batch_messages,
            batch=p.batch,
            max_in_flight=p.batch_in_flight,
            max_batch=p.batch_in_flight // 4,
        )


async def _raw_etcd(bench: MessagingBench, concurrency: int, batch: int, n: int) -> dict[str, Any]:
    p = bench.plan
    etcd = bench.etcd()
    spec = {"kind": "etcd", "port": etcd.client_port, "concurrency": concurrency, "batch": batch}
    sender = bench.start_role(f"tp-raw-etcd-{batch}", "send", spec)
    try:
        await ask(sender, f"run {p.warmup * batch}")
        window = Window({"etcd": bench.etcd_pid(), "client": sender.pid})
        result = await ask(sender, f"run {n}")
        return {**result, **window.close()}
    finally:
        bench.children.stop(sender)


async def _ours(
    bench: MessagingBench, store: str, *, concurrency: int, n: int, batch: int = 1, **consume: int
) -> dict[str, Any]:
    p = bench.plan
    step = f"throughput-{store}" + (f"-batch{batch}" if batch > 1 else "")
    cp = bench.start_cp(f"cp-{step}", store)
    roles = []
    try:
        consumer_spec, sender_spec = bench.queue_specs(
            cp, step, concurrency=concurrency, batch=batch, **consume
        )
        consumer = bench.start_role(f"tp-consumer-{store}", "consume", consumer_spec)
        roles.append(consumer)
        sender = bench.start_role(f"tp-sender-{store}", "send", sender_spec)
        roles.append(sender)
        warmed = await ask(sender, f"run {p.warmup * batch}")
        await ask(consumer, f"wait {warmed['done']} 60")
        window = Window(
            {**bench.server_pids(cp, store), "sender": sender.pid, "consumer": consumer.pid}
        )
        sent = await ask(sender, f"run {n}")
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
    raw, raw_batch = t["raw_etcd"], t.get("raw_etcd_batch")
    for store in plan.stores:
        for variant in (store, f"{store}-batch"):
            ours = t.get(variant)
            if ours:
                _rows(variant, ours, raw, raw_batch, plan, rows)
    notes.append(
        f"(1) closed loop. One message per call: {plan.concurrency} concurrent SendMessage tasks "
        f"in one client process, one Consume stream (maxInFlight {plan.max_in_flight}) in "
        f"another acking each delivery at once; raw: {plan.raw_puts} aetcd puts of a "
        f"{request_bytes()}-byte value at the same concurrency. Batched: "
        f"{plan.batch_concurrency} tasks sending SendMessages of {plan.batch}, one Consume "
        f"stream (maxInFlight {plan.batch_in_flight}, maxBatch {plan.batch_in_flight // 4}) "
        f"acking each response's deliveries in one AckBatch; raw: txns of {plan.batch} puts on "
        f"{plan.batch_concurrency} tasks. Rate = messages / (first send -> last delivery at the "
        "consumer). Per message the queue writes 3 records (create-only send, CAS claim, CAS "
        "ack), joined into shared txns by group commit. "
        + "; ".join(_detail(v, t[v]) for v in _variants(plan) if t.get(v))
        + f"; raw etcd: {raw['done']} puts, {raw['errors']} errors, etcd CPU "
        f"{fmt(raw['cpu_util']['etcd'], digits=2)} cores."
    )


def _variants(plan: Plan) -> list[str]:
    return [v for store in plan.stores for v in (store, f"{store}-batch")]


def _rows(
    variant: str,
    ours: dict[str, Any],
    raw: dict[str, Any],
    raw_batch: dict[str, Any] | None,
    plan: Plan,
    rows: list[Row],
) -> None:
    batched = variant.endswith("-batch")
    store = variant.removesuffix("-batch")
    how = (
        f"batches of {plan.batch}, {plan.batch_concurrency} senders"
        if batched
        else f"{plan.concurrency} senders"
    )
    text, ratio = fmt_ratio(ours["per_s"], raw["per_s"])
    clean = (
        ours["complete"]
        and ours["send"]["errors"] == 0
        and ours["consume"]["duplicates"] == 0
        and ours["sample_delivered"][0] == ours["sample_delivered"][1]
    )
    rows.append(
        Row(
            f"(1) send→consume→ack on {store}, {how} (msg/s)",
            fmt(ours["per_s"], digits=0),
            fmt(raw["per_s"], digits=0) + " (raw etcd put)",
            text,
            f">= {TARGET}x",
            met(ratio >= TARGET if ratio is not None and clean else None),
        )
    )
    if batched and raw_batch is not None:
        text, _ = fmt_ratio(ours["per_s"], raw_batch["per_s"])
        rows.append(
            Row(
                f"(1) {store}, batched: vs raw etcd txns of {plan.batch} puts (msg/s)",
                fmt(ours["per_s"], digits=0),
                fmt(raw_batch["per_s"], digits=0) + " (raw etcd txn puts)",
                text,
                "info",
                "-",
            )
        )
    send = ours["send"]
    base = raw_batch if batched and raw_batch is not None else raw
    text, _ = fmt_ratio(send["p99_ms"], base["p99_ms"])
    call = "SendMessages" if batched else "SendMessage"
    rows.append(
        Row(
            f"(1) {store}{', batched' if batched else ''}: {call} p50 / p99 vs "
            f"{'txn' if batched else 'put'} (ms)",
            f"{fmt(send['p50_ms'], digits=2)} / {fmt(send['p99_ms'], digits=2)}",
            f"{fmt(base['p50_ms'], digits=2)} / {fmt(base['p99_ms'], digits=2)}",
            text,
            "info",
            "-",
        )
    )
    cp_cpu = ours["cpu_s"]["cp"]
    rows.append(
        Row(
            f"(1) {store}{', batched' if batched else ''}: control-plane CPU per message (µs), "
            "cores busy",
            f"{fmt(cp_cpu / max(1, ours['send']['done']) * 1e6, digits=0)}, "
            f"{fmt(ours['cpu_util']['cp'], digits=2)}",
            "-",
            "-",
            "info",
            "-",
        )
    )


def _detail(variant: str, ours: dict[str, Any]) -> str:
    return (
        f"{variant}: sends alone ran at {ours['send']['per_s']:,.0f}/s, "
        f"{ours['consume']['received']} delivered ({ours['consume']['duplicates']} redelivered), "
        f"{ours['send']['errors']} send errors, last {ours['sample_delivered'][1]} read back "
        f"delivered: {ours['sample_delivered'][0]}; cores busy: {cores(ours)}"
    )
