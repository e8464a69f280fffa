"""Lucid REST gateway: the seed's REST/JSON surface, transcoded onto gRPC from the descriptors.

Public surface:

* ``create_app(grpc_target, ...)`` - the Starlette (ASGI) app over one shared grpc.aio channel;
* ``start_gateway(grpc_target, http_addr)`` - serve it in the running event loop, returns a
  ``GatewayHandle`` (``.port``, ``.url``, ``await .stop()``);
* ``run_gateway(grpc_target, http_addr)`` - blocking entry point for ``lucid-cp gateway``.

Modules: http_rule (templates), services + routes (route table from descriptors), codec (REST
JSON <-> protobuf), transcode (HTTP request -> gRPC request), errors (the one error table),
streaming (NDJSON), openapi (the document), backend (the channel), app, server.
"""

from gateway.app import create_app
from gateway.server import GatewayHandle, run_gateway, start_gateway

__all__ = ["GatewayHandle", "create_app", "run_gateway", "start_gateway"]
