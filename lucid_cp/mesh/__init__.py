"""The service mesh's pure core: selectors, write-time checks and the one decision engine.

Nothing here does I/O or imports grpc: the control plane and (later) the sidecar import it."""
