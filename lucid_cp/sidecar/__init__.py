"""The sidecar system: sidecar configurations and their policies (lucid.sidecar.v1)."""
