"""(2) End-to-end latency at a fixed offered load: SendMessage paced at ``rate``/s (open loop),
latency = arrival at the Consume stream - the send's scheduled time, on sqlite and on etcd; the
reference is NATS JetStream at the same rate (publish awaiting the PubAck -> a durable push
consumer acking each message), same process layout: one sender process, one consumer process.
"""

from __future__ import annotations

from typing import Any

from scripts.bench.children import Child, ask
from scripts.bench.messaging_common import (
    MessagingBench,
    Plan,
    Window,
    cores,
    measured,
)
from scripts.bench.report import Row, fmt, fmt_ratio, met

TARGET_P99_MS = 20.0


async def run(bench: MessagingBench) -> None:
    p = bench.plan
    results: dict[str, Any] = {}
    bench.results["latency"] = results
    for store in p.stores:
        results[store] = await _ours(bench, store, p.rate)
        results[f"{store}-stream"] = await _ours(bench, store, p.rate, stream=True)
    if bench.nats_skip is None:
        results["nats"] = await _nats(bench)
    for store in p.stores:
        results[f"{store}@low"] = await _ours(bench, store, p.low_rate)


async def _ours(
    bench: MessagingBench, store: str, rate: float, *, stream: bool = False
) -> dict[str, Any]:
    """SendMessage per message and one delivery per Consume response; or (``stream``) sends
    pipelined on one PublishMessages stream and Consume batches (maxBatch) acked in batches."""
    name = f"latency-{store}-{rate:g}" + ("-stream" if stream else "")
    cp = bench.start_cp(f"cp-{name}", store)
    try:
        batching = {"publish": True, "max_batch": bench.plan.max_in_flight} if stream else {}
        consumer, sender = bench.queue_specs(cp, name, rate=rate, **batching)
        pids = bench.server_pids(cp, store)
        result = await _measure(bench, name, consumer, sender, pids, rate)
        # Sends that failed: stored or not? (a client error does not say)
        result["refused_states"] = await bench.states(cp, result["send"]["refused_ids"])
        return result
    finally:
        bench.stop_cp(cp)


async def _nats(bench: MessagingBench) -> dict[str, Any]:
    p = bench.plan
    server = bench.nats()
    url = f"nats://{bench.target(server)}"
    step = {"url": url, "stream": "LATENCY", "subject": "latency.tick"}
    consumer = {**step, "kind": "nats-js", "max_in_flight": p.max_in_flight}
    sender = {**step, "kind": "nats-js", "rate": p.rate}
    return await _measure(bench, "latency-nats", consumer, sender, {"nats": server.pid}, p.rate)


async def _measure(
    bench: MessagingBench,
    name: str,
    consumer_spec: dict[str, Any],
    sender_spec: dict[str, Any],
    server_pids: dict[str, int],
    rate: float,
) -> dict[str, Any]:
    """A warm-up second, then ``seconds`` at ``rate``; waits until every accepted send has
    arrived (a send refused is counted as an error, not as missing)."""
    p = bench.plan
    warm = int(rate * p.warmup_s)
    n = int(rate * p.seconds)
    roles: list[Child] = []
    try:
        consumer = bench.start_role(f"{name}-consumer", "consume", consumer_spec)
        roles.append(consumer)
        sender = bench.start_role(f"{name}-sender", "send", sender_spec)
        roles.append(sender)
        warmed = await ask(sender, f"run {warm}")
        await ask(consumer, f"wait {warmed['done']} 60")
        window = Window({**server_pids, "sender": sender.pid, "consumer": consumer.pid})
        sent = await ask(sender, f"run {n}")
        got = await ask(consumer, f"wait {warmed['done'] + sent['done']} 60")
        cpu = window.close()
        latency = measured([await bench.dump(consumer)], sent["start_ns"], 1, sent["done"])
        return {"rate": rate, "send": sent, "consume": got, "latency": latency, **cpu}
    finally:
        for role in roles:
            bench.children.stop(role)


def report(results: dict[str, Any], plan: Plan, rows: list[Row], notes: list[str]) -> None:
    lat = results.get("latency")
    if not lat:
        return
    nats = lat.get("nats")
    base = nats["latency"] if nats else None
    for key in [v for store in plan.stores for v in (store, f"{store}-stream")]:
        ours = lat.get(key)
        if not ours:
            continue
        store = key.removesuffix("-stream")
        how = (
            "PublishMessages stream, Consume maxBatch"
            if key.endswith("-stream")
            else "SendMessage per message"
        )
        mine = ours["latency"]
        text, _ = fmt_ratio(mine["p99_ms"], base["p99_ms"] if base else None)
        clean = mine["missing"] == 0 and ours["send"]["errors"] == 0
        rows.append(
            Row(
                f"(2) send→delivery at {plan.rate:,.0f} msg/s on {store}, {how}: p50 / p99 (ms)",
                _pair(mine),
                _pair(base) + " (NATS JetStream)" if base else "n/a (NATS skipped)",
                text,
                f"p99 <= {TARGET_P99_MS:.0f} ms",
                met(mine["p99_ms"] <= TARGET_P99_MS if clean else False),
            )
        )
        rows.append(
            Row(
                f"(2) {key} at {plan.rate:,.0f} msg/s: sends refused, delivered/s, "
                "control-plane cores busy",
                f"{ours['send']['errors']} of {ours['send']['done'] + ours['send']['errors']}, "
                f"{fmt(_delivered_per_s(ours), digits=0)}, {fmt(ours['cpu_util']['cp'], digits=2)}",
                (
                    f"{nats['send']['errors']}, {fmt(_delivered_per_s(nats), digits=0)}, "
                    f"{fmt(nats['cpu_util']['nats'], digits=2)} (nats-server)"
                    if nats
                    else "n/a"
                ),
                "-",
                "info",
                "-",
            )
        )
    for store in plan.stores:
        low = lat.get(f"{store}@low")
        if low:
            rows.append(
                Row(
                    f"(2) send→delivery at {plan.low_rate:,.0f} msg/s on {store} (below "
                    "capacity): p50 / p99 (ms)",
                    _pair(low["latency"]),
                    "-",
                    "-",
                    "info",
                    "-",
                )
            )
            per_message = 1e6 / max(1, low["latency"]["n"])
            threads = low.get("cp_threads_s", {})
            other = sum(v for k, v in threads.items() if k != "main")
            rows.append(
                Row(
                    f"(2) {store} at {plan.low_rate:,.0f} msg/s: control-plane CPU per message "
                    "(µs): all / event-loop thread / other threads",
                    f"{fmt(low['cpu_s']['cp'] * per_message, digits=0)} / "
                    f"{fmt(threads.get('main', 0.0) * per_message, digits=0)} / "
                    f"{fmt(other * per_message, digits=0)}",
                    "-",
                    "-",
                    "info",
                    "-",
                )
            )
    parts = []
    for key, r in lat.items():
        m = r["latency"]
        parts.append(
            f"{key} at {r['rate']:,.0f}/s: send/publish answered p50 / p99 "
            f"{fmt(r['send']['p50_ms'], digits=2)} / {fmt(r['send']['p99_ms'], digits=2)} ms, "
            f"delivery max {fmt(m['max_ms'], digits=1)} ms, {m['missing']} of {m['expected']} "
            f"accepted missing, {m['duplicates']} redelivered, {r['send']['errors']} sends "
            f"refused {r['send']['first_errors'][:1]}{_stored(r)}, pacer late by up to "
            f"{fmt(r['send']['max_pacer_lag_ms'], digits=1)} ms; cores busy: {cores(r)}"
        )
    notes.append(
        f"(2) open loop: {plan.rate:,.0f} sends/s for {plan.seconds:g} s after a "
        f"{plan.warmup_s:g} s warm-up, each scheduled at start + i/rate and timed from that "
        "schedule to the arrival at the consumer (CLOCK_MONOTONIC across processes: queueing in "
        "the sender counts); asyncio paces in ~1 ms steps. One sender process, one consumer "
        f"process; Consume maxInFlight / NATS max_ack_pending {plan.max_in_flight}, every "
        "delivery acked on arrival. " + "; ".join(parts) + "."
    )


def _pair(m: dict[str, Any]) -> str:
    return f"{fmt(m['p50_ms'], digits=2)} / {fmt(m['p99_ms'], digits=2)}"


def _delivered_per_s(r: dict[str, Any]) -> float | None:
    """Deliveries of the measured run / (its first send -> its last arrival)."""
    seconds = (r["consume"]["last_arrival_ns"] - r["send"]["start_ns"]) / 1e9
    return r["latency"]["n"] / seconds if seconds > 0 else None


def _stored(r: dict[str, Any]) -> str:
    """What became of the refused sends checked afterwards (a failed call may still be stored)."""
    states = r.get("refused_states")
    if not states:
        return ""
    text = ", ".join(f"{k.removeprefix('MESSAGE_STATE_').lower()} {v}" for k, v in states.items())
    return f" (read back afterwards: {text})"
