"""A control-plane replica in its own process, for tests that kill one (SIGKILL) mid-way.

    python replica_proc.py <store-url> <replica-id> <clock-speed> <replica-ttl>

Prints "ready" once serving, then runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

from lucid_cp.app import start_control_plane
from lucid_cp.clock import ScaledClock
from lucid_cp.config import Settings
from lucid_cp.discovery.settings import DiscoverySettings


async def main(store_url: str, replica_id: str, speed: str, ttl: str) -> None:
    await start_control_plane(
        Settings(
            store_url=store_url,
            grpc_addr="127.0.0.1:0",
            jwt_secret=b"replica-process-secret-0123456789abcdef",
            replica_ttl=int(ttl),
            sections=(DiscoverySettings(health_replica_id=replica_id),),
        ),
        clock=ScaledClock(float(speed)),
    )
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
