"""Import boundaries, read from the source with ``ast`` (nothing is imported):

(a) the cores never import grpc (``grpc``, ``grpc_*``) nor the server layer (``lucid_cp.rpc``,
    ``lucid_cp.app``), neither directly nor through other lucid_cp modules;
(b) the REST gateway imports nothing from lucid_cp but the generated code and the clock.

Every import counts: top-level, inside functions, under ``if TYPE_CHECKING``, relative, and
``importlib.import_module("literal")``. Transitively, the lucid_cp modules a core loads count
with what they import at import time. A failure lists ``path:line`` of each offending import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (a) Cores: pure code that must run without grpc or the server layer.
CORE_TREES = (
    "lucid_cp/discovery",
    "lucid_cp/watchcache",
    "lucid_cp/auth",
    "lucid_cp/mesh",
    "lucid_cp/sidecar",
    "lucid_cp/events",
    "lucid_cp/messaging",
)
CORE_FILES = (
    "lucid_cp/validation.py",
    "lucid_cp/errors.py",
    "lucid_cp/store/base.py",
    "lucid_cp/clock.py",
    "lucid_cp/call.py",
    "lucid_cp/tasks.py",
    "lucid_cp/replica_lease.py",
    "lucid_cp/reasons.py",
    "lucid_cp/store/group_commit.py",
    "lucid_cp/store/_contract.py",
)
NOT_CORE = (
    "lucid_cp/discovery/service.py",  # the servicer
    "lucid_cp/discovery/module.py",  # wiring: descriptors, servicers
    "lucid_cp/discovery/health/grpc_probe.py",  # a grpc.health.v1 client probe, injected
    "lucid_cp/mesh/service.py",  # the servicer
    "lucid_cp/mesh/module.py",  # wiring: descriptors, servicers
    "lucid_cp/sidecar/service.py",  # the servicer
    "lucid_cp/sidecar/module.py",  # wiring: descriptors, servicers
    "lucid_cp/events/service.py",  # the servicer
    "lucid_cp/events/module.py",  # wiring: descriptors, servicers
    "lucid_cp/messaging/service.py",  # the servicer
    "lucid_cp/messaging/module.py",  # wiring: descriptors, servicers
)
SERVER_LAYER = ("lucid_cp.rpc", "lucid_cp.app")
# Servicers are thin: they get the principal in a Call, never reach into the server layer.
SERVICERS = (
    "lucid_cp/discovery/service.py",
    "lucid_cp/mesh/service.py",
    "lucid_cp/sidecar/service.py",
    "lucid_cp/events/service.py",
    "lucid_cp/messaging/service.py",
)

# (b) What the gateway may take from lucid_cp.
GATEWAY_ALLOWED = ("lucid_cp.api", "lucid_cp.clock")


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    target: str  # the dotted name imported ("from a import b" gives "a.b")

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _nodes(tree: ast.AST, import_time_only: bool) -> Iterator[ast.AST]:
    """ast.walk, or only what runs when the module is imported (not function bodies)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if import_time_only and isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        ):
            continue
        todo.extend(ast.iter_child_nodes(node))


def imports_of(
    path: Path, name: str | None = None, *, import_time_only: bool = False
) -> list[Import]:
    """Every import in ``path`` (module ``name``, used for relative imports); with
    ``import_time_only``, those inside functions (lazy imports) are left out."""
    name = name if name is not None else module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in _nodes(tree, import_time_only):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            found += [
                Import(path, node.lineno, base if alias.name == "*" else f"{base}.{alias.name}")
                for alias in node.names
            ]
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(path, node.lineno, node.args[0].value))
    return found


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def under(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def is_grpc(target: str) -> bool:
    top = target.split(".")[0]
    return top == "grpc" or top.startswith("grpc_")


def forbidden_in_core(target: str) -> bool:
    return is_grpc(target) or any(under(target, p) for p in SERVER_LAYER)


def allowed_in_gateway(target: str) -> bool:
    return not under(target, "lucid_cp") or any(under(target, p) for p in GATEWAY_ALLOWED)


def python_files(tree: str) -> list[Path]:
    return sorted((ROOT / tree).rglob("*.py"))


def core_files() -> list[Path]:
    files = [p for tree in CORE_TREES for p in python_files(tree)]  # absent trees: none
    files += [ROOT / f for f in CORE_FILES if (ROOT / f).exists()]
    return sorted(p for p in files if str(p.relative_to(ROOT)) not in NOT_CORE)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- the lucid_cp import graph, for transitive checks --------------------------------------------


def file_of(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def modules_loaded_by(target: str) -> list[Path]:
    """The lucid_cp files executed by importing ``target``: each package on the way, then the
    module itself (``from a.b import c`` loads a, a.b and, if it is a module, a.b.c)."""
    parts = target.split(".")
    files = [file_of(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
    return [f for f in files if f is not None]


def chain_to_forbidden(start: Path) -> list[Import] | None:
    """A shortest chain of imports from ``start`` through lucid_cp modules to a forbidden one.

    ``start`` counts all its imports (as rule (a)); the modules it loads count only what they
    import at import time (a lazy ``import`` inside a function of lucid_cp.store, say, loads
    nothing when a core imports lucid_cp.store.base)."""
    seen = {start}
    queue: list[tuple[Path, list[Import]]] = [(start, [])]
    while queue:
        path, chain = queue.pop(0)
        for imp in imports_of(path, import_time_only=path != start):
            if forbidden_in_core(imp.target):
                return [*chain, imp]
            if not under(imp.target, "lucid_cp"):
                continue
            for nxt in modules_loaded_by(imp.target):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append((nxt, [*chain, imp]))
    return None


# --- the checker checks ---------------------------------------------------------------------------

SAMPLE = """
from __future__ import annotations
import importlib
import grpc.aio
from grpc_status import rpc_status
from lucid_cp import app
from ..rpc.policy import PUBLIC_SERVICES
from . import keys
from google.rpc import status_pb2
import grpcfoo

def later():
    import lucid_cp.rpc.table
    return importlib.import_module("grpc_health.v1.health_pb2")
"""


def test_the_checker_finds_every_kind_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE, encoding="utf-8")
    found = [(i.line, i.target) for i in imports_of(sample, "lucid_cp.discovery.sample")]
    assert sorted(found) == [  # ast order is not source order: compare sorted
        (3, "importlib"),
        (4, "grpc.aio"),
        (5, "grpc_status.rpc_status"),
        (6, "lucid_cp.app"),
        (7, "lucid_cp.rpc.policy.PUBLIC_SERVICES"),
        (8, "lucid_cp.discovery.keys"),
        (9, "google.rpc.status_pb2"),
        (10, "grpcfoo"),
        (13, "lucid_cp.rpc.table"),
        (14, "grpc_health.v1.health_pb2"),
    ]
    bad = sorted(
        i.line
        for i in imports_of(sample, "lucid_cp.discovery.sample")
        if forbidden_in_core(i.target)
    )
    assert bad == [4, 5, 6, 7, 13, 14]
    lazy = [i.line for i in imports_of(sample, "lucid_cp.discovery.sample", import_time_only=True)]
    assert sorted(lazy) == [3, 4, 5, 6, 7, 8, 9, 10]


def test_the_gateway_rule() -> None:
    assert allowed_in_gateway("grpc.aio")
    assert allowed_in_gateway("lucid_cp.api.lucid.discovery.v1.discovery_pb2")
    assert allowed_in_gateway("lucid_cp.clock.Clock")
    assert not allowed_in_gateway("lucid_cp")
    assert not allowed_in_gateway("lucid_cp.discovery.balancer")
    assert not allowed_in_gateway("lucid_cp.store.base.Store")
    assert not allowed_in_gateway("lucid_cp.validation")
    assert not allowed_in_gateway("lucid_cp.apix")


def test_the_core_set_is_what_the_rule_names() -> None:
    cores = {rel(p) for p in core_files()}
    assert {"lucid_cp/validation.py", "lucid_cp/errors.py", "lucid_cp/clock.py"} <= cores
    assert "lucid_cp/auth/ratelimit.py" in cores
    assert "lucid_cp/discovery/balancer.py" in cores
    assert not cores & set(NOT_CORE)
    assert not any(c.startswith(("lucid_cp/rpc/", "lucid_cp/api/")) for c in cores)


# --- the rules on the tree ------------------------------------------------------------------------


def _cases(files: list[Path], xfails: dict[str, str]) -> Iterator[object]:
    for path in files:
        reason = xfails.get(rel(path))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        yield pytest.param(path, id=rel(path), marks=marks)


# A known violation would be listed here as {"path": "violating import, why"}; none today.
CORE_XFAILS: dict[str, str] = {}
CORE_TRANSITIVE_XFAILS: dict[str, str] = {}
GATEWAY_XFAILS: dict[str, str] = {}


@pytest.mark.parametrize("path", list(_cases(core_files(), CORE_XFAILS)))
def test_a_core_imports_neither_grpc_nor_the_server_layer(path: Path) -> None:
    offending = [i.where() for i in imports_of(path) if forbidden_in_core(i.target)]
    assert not offending, "core module imports grpc or the server layer:\n" + "\n".join(offending)


@pytest.mark.parametrize("path", list(_cases(core_files(), CORE_TRANSITIVE_XFAILS)))
def test_a_core_does_not_reach_grpc_through_other_modules(path: Path) -> None:
    chain = chain_to_forbidden(path)
    assert chain is None, "core module reaches grpc or the server layer:\n" + "\n".join(
        i.where() for i in chain
    )


@pytest.mark.parametrize("path", list(_cases(python_files("gateway"), GATEWAY_XFAILS)))
def test_the_gateway_imports_only_generated_code_and_the_clock(path: Path) -> None:
    offending = [i.where() for i in imports_of(path) if not allowed_in_gateway(i.target)]
    assert not offending, (
        f"gateway imports from lucid_cp beyond {', '.join(GATEWAY_ALLOWED)}:\n"
        + "\n".join(offending)
    )


@pytest.mark.parametrize("servicer", SERVICERS)
def test_a_servicer_imports_neither_grpc_nor_the_server_layer(servicer: str) -> None:
    offending = [i.where() for i in imports_of(ROOT / servicer) if forbidden_in_core(i.target)]
    assert not offending, "servicer imports grpc or the server layer:\n" + "\n".join(offending)


def test_there_is_a_gateway_to_check() -> None:
    assert python_files("gateway"), "no gateway/ found: the boundary test checks nothing"


# The decision engine is imported by the sidecar: it depends on the generated code and the
# selectors only (not on lucid_cp.errors, checks or anything with I/O).
ENGINE_ALLOWED = ("lucid_cp.api", "lucid_cp.mesh.selectors")


@pytest.mark.parametrize("path", ["lucid_cp/mesh/engine.py", "lucid_cp/mesh/selectors.py"])
def test_the_decision_engine_imports_only_api_and_selectors(path: str) -> None:
    wrong = [
        imp.where()
        for imp in imports_of(ROOT / path)
        if under(imp.target, "lucid_cp") and not any(under(imp.target, a) for a in ENGINE_ALLOWED)
    ]
    assert wrong == []
