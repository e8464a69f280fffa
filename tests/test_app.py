"""The composition root (lucid_cp.app) over real servers on 127.0.0.1:0: declarations are
checked before anything starts, a failed start unwinds in reverse (no task running, no file
locked), and stop() shuts systems down in reverse and closes the store."""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message_factory import GetMessageClass

from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import SystemClock
from lucid_cp.config import RateLimit, Settings
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.discovery.settings import DiscoverySettings
from lucid_cp.errors import InvalidArgument
from lucid_cp.rpc.policy import PolicyError
from lucid_cp.startup import StartupError
from lucid_cp.store.base import StoreUnavailableError
from lucid_cp.store.memory import MemoryStore
from lucid_cp.system import Environment

SECRET = b"app-tests-secret-0123456789abcdef"
# Background tasks a started plane owns (lucid_cp/discovery/index.py, lucid_cp/store/sqlite.py).
BACKGROUND_TASKS = frozenset({"discovery-reflector", "lucid-lease-reaper"})


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "store_url": "memory://",
        "grpc_addr": "127.0.0.1:0",
        "jwt_secret": SECRET,
        "sections": (DiscoverySettings(health_checks_enabled=False),),
    }
    return Settings(**{**base, **overrides})


def leftover_tasks() -> list[str]:
    return sorted(
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name() in BACKGROUND_TASKS and not t.done()
    )


# -- a system that is not part of the tree: its proto file is built at test time ----------------

PACKAGE = "lucid.apptest.v1"
SERVICE = f"{PACKAGE}.PingService"
BUCKET = "apptest-ping"


@cache
def ping_file() -> FileDescriptor:
    """lucid/apptest/v1/ping.proto: PingService.Ping, whose policy names the bucket BUCKET."""
    f = descriptor_pb2.FileDescriptorProto(name="lucid/apptest/v1/ping.proto", package=PACKAGE)
    f.syntax = "proto3"
    f.dependency.append("lucid/common/v1/options.proto")  # loaded by importing options_pb2
    for name in ("PingRequest", "PingResponse"):
        message = f.message_type.add(name=name)
        message.field.add(
            name="text",
            number=1,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    method = f.service.add(name="PingService").method.add(
        name="Ping", input_type=f".{PACKAGE}.PingRequest", output_type=f".{PACKAGE}.PingResponse"
    )
    method.options.Extensions[options_pb2.policy].CopyFrom(
        options_pb2.MethodPolicy(rate_limit_bucket=BUCKET)
    )
    method.options.Extensions[options_pb2.http_options].CopyFrom(
        options_pb2.HttpOptions(success_status=200)
    )
    pool = descriptor_pool.Default()
    pool.Add(f)
    return pool.FindFileByName(f.name)


def ping_message(name: str) -> Any:
    return GetMessageClass(ping_file().pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


class Recorder:
    """A fake System (the lucid_cp.system.System protocol) that records its life in ``log``."""

    name: ClassVar[str] = "recorder"
    files: ClassVar[tuple[FileDescriptor, ...]] = ()
    rate_limits: ClassVar[Mapping[str, RateLimit]] = {}
    status_rows: ClassVar[Mapping[type[Exception], int]] = {}
    invalid_request: ClassVar[type[InvalidArgument]] = InvalidArgument
    settings_type: ClassVar[type[Any]] = DiscoverySettings
    log: ClassVar[list[str]]
    fail_start: ClassVar[BaseException | None] = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        pass

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> object:
        return DiscoverySettings()

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.log.append(f"{self.name}.init")

    async def start(self) -> None:
        self.log.append(f"{self.name}.start")
        if self.fail_start is not None:
            raise self.fail_start

    def register(self, server: grpc.aio.Server) -> None:
        self.log.append(f"{self.name}.register")

    async def stop(self) -> None:
        self.log.append(f"{self.name}.stop")


def recorder(name: str, log: list[str], **attrs: Any) -> type[Recorder]:
    return type(f"Recorder_{name}", (Recorder,), {"name": name, "log": log, **attrs})


class PingRecorder(Recorder):
    """Serves lucid.apptest.v1.PingService through the control plane's one interceptor."""

    files = (ping_file(),)

    def register(self, server: grpc.aio.Server) -> None:
        super().register(server)
        request, response = ping_message("PingRequest"), ping_message("PingResponse")

        async def ping(req: Any, call: Any) -> Any:
            return response(text=f"pong {req.text} from {call.principal.subject}")

        handler = grpc.unary_unary_rpc_method_handler(
            ping,
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Ping": handler}),)
        )


def ping_recorder(log: list[str], **attrs: Any) -> type[Recorder]:
    return type("PingRecorder_", (PingRecorder,), {"name": "ping", "log": log, **attrs})


class RecordingStore(MemoryStore):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def close(self) -> None:
        self.log.append("store.close")
        await super().close()


# -- declarations are refused before anything starts ---------------------------------------------


async def test_an_override_for_an_unknown_bucket_fails_before_anything_starts() -> None:
    log: list[str] = []
    store = RecordingStore(log)
    try:
        with pytest.raises(PolicyError, match=r"unknown bucket.*registraton"):
            await start_control_plane(
                settings(rate_limits={"registraton": RateLimit(5)}),
                store=store,
                systems=(DiscoverySystem, recorder("a", log)),
            )
        assert log == []  # no system built or started, the store not closed
        assert leftover_tasks() == []  # not even the store's reaper: the store was never used
        revision = await store.current_revision()  # and it is still usable
        assert await store.put(b"/apptest/k", b"v") == revision + 1
    finally:
        await store.close()


async def test_an_override_for_a_declared_bucket_is_accepted() -> None:
    log: list[str] = []
    plane = await start_control_plane(
        settings(rate_limits={"registration": RateLimit(5)}),
        store=RecordingStore(log),
        systems=(DiscoverySystem, recorder("a", log)),
    )
    await plane.stop(0)
    assert log == ["a.init", "a.start", "a.register", "a.stop", "store.close"]


async def test_a_method_naming_an_unconfigured_bucket_fails_start_up() -> None:
    log: list[str] = []
    store = RecordingStore(log)
    try:
        with pytest.raises(PolicyError) as err:
            await start_control_plane(
                settings(), store=store, systems=(DiscoverySystem, ping_recorder(log))
            )
        assert f"/{SERVICE}/Ping: rate-limit bucket {BUCKET!r} is not configured" in str(err.value)
        assert log == []
        assert leftover_tasks() == []
    finally:
        await store.close()


async def test_a_new_system_declaring_its_bucket_is_served_through_the_interceptor() -> None:
    log: list[str] = []
    ping = ping_recorder(log, rate_limits={BUCKET: RateLimit(2)})
    plane = await start_control_plane(
        settings(), store=RecordingStore(log), systems=(DiscoverySystem, ping)
    )
    try:
        token = mint_token(SECRET, "tester", Role.SERVICE, SystemClock())
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            call = channel.unary_unary(
                f"/{SERVICE}/Ping",
                request_serializer=ping_message("PingRequest").SerializeToString,
                response_deserializer=ping_message("PingResponse").FromString,
            )
            reply = await call(
                ping_message("PingRequest")(text="hi"),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
            assert reply.text == "pong hi from tester"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(ping_message("PingRequest")(text="hi"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await plane.stop(0)


# -- unwinding a failed start ---------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Any:
    """A port on 127.0.0.1 with a socket listening on it for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_port_already_bound_unwinds_and_leaves_the_sqlite_file_free(
    busy_port: int, tmp_path: Path
) -> None:
    log: list[str] = []
    url = f"sqlite:///{tmp_path}/state.db"
    systems = (DiscoverySystem, recorder("a", log), recorder("b", log))
    with pytest.raises(StartupError, match=f"cannot listen for gRPC on 127.0.0.1:{busy_port}"):
        await start_control_plane(
            settings(store_url=url, grpc_addr=f"127.0.0.1:{busy_port}"), systems=systems
        )
    started = ["a.init", "a.start", "b.init", "b.start", "a.register", "b.register"]
    assert log == [*started, "b.stop", "a.stop"]
    assert leftover_tasks() == []

    # The file is free: a second control plane opens it at once.
    log.clear()
    plane = await start_control_plane(settings(store_url=url), systems=systems)
    try:
        assert sorted(leftover_tasks()) == sorted(BACKGROUND_TASKS)
        # Control: while it is open, the file is locked, so the reopen above proves something.
        with pytest.raises(StartupError, match="in use by another process") as err:
            await start_control_plane(settings(store_url=url), systems=(DiscoverySystem,))
        assert isinstance(err.value.__cause__, StoreUnavailableError)
    finally:
        await plane.stop(0)
    assert log[-2:] == ["b.stop", "a.stop"]
    assert leftover_tasks() == []


async def test_a_system_whose_start_raises_unwinds_what_started() -> None:
    log: list[str] = []
    store = RecordingStore(log)
    boom = RuntimeError("b cannot start")
    systems = (
        DiscoverySystem,
        recorder("a", log),
        recorder("b", log, fail_start=boom),
        recorder("c", log),
    )
    with pytest.raises(RuntimeError) as err:
        await start_control_plane(settings(), store=store, systems=systems)
    assert err.value is boom
    # b is stopped too (stop releases a partial start); c is never built; the store closes last.
    assert log == ["a.init", "a.start", "b.init", "b.start", "b.stop", "a.stop", "store.close"]
    assert leftover_tasks() == []
    with pytest.raises(StoreUnavailableError, match="closed"):
        await store.current_revision()


async def test_a_cancelled_start_unwinds_too() -> None:
    log: list[str] = []
    store = RecordingStore(log)
    systems = (recorder("a", log), recorder("b", log, fail_start=asyncio.CancelledError()))
    with pytest.raises(asyncio.CancelledError):
        await start_control_plane(settings(), store=store, systems=(DiscoverySystem, *systems))
    assert log == ["a.init", "a.start", "b.init", "b.start", "b.stop", "a.stop", "store.close"]
    assert leftover_tasks() == []


# -- graceful stop --------------------------------------------------------------------------------


async def test_stop_stops_systems_in_reverse_and_closes_the_store() -> None:
    log: list[str] = []
    store = RecordingStore(log)
    a, b = recorder("a", log), recorder("b", log)
    plane: ControlPlane = await start_control_plane(
        settings(), store=store, systems=(DiscoverySystem, a, b)
    )
    assert isinstance(plane.system(DiscoverySystem), DiscoverySystem)
    assert plane.system(DiscoverySystem) is plane.systems["discovery"]
    assert isinstance(plane.system(b), b) and plane.system(b).env.store is store
    assert plane.system(b).env.systems["a"] is plane.system(a)  # b sees the systems before it
    assert plane.store is store
    assert sorted(leftover_tasks()) == sorted(BACKGROUND_TASKS)
    assert log == ["a.init", "a.start", "b.init", "b.start", "a.register", "b.register"]

    await plane.stop(0)
    assert log[6:] == ["b.stop", "a.stop", "store.close"]
    assert leftover_tasks() == []
    async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_two_systems_declaring_one_bucket_are_refused() -> None:
    class Twin(DiscoverySystem):
        name = "twin"
        files = ()
        status_rows: ClassVar[Mapping[type[Exception], int]] = {}

    with pytest.raises(PolicyError, match="declared by both discovery and twin"):
        await start_control_plane(
            Settings(grpc_addr="127.0.0.1:0", jwt_secret=b"x" * 32),
            systems=(DiscoverySystem, Twin),
        )


async def test_two_systems_with_one_name_are_refused() -> None:
    class Again(DiscoverySystem):
        rate_limits: ClassVar[Mapping[str, RateLimit]] = {}
        status_rows: ClassVar[Mapping[type[Exception], int]] = {}
        files = ()

    with pytest.raises(PolicyError, match="share a name"):
        await start_control_plane(
            Settings(grpc_addr="127.0.0.1:0", jwt_secret=b"x" * 32),
            systems=(DiscoverySystem, Again),
        )
