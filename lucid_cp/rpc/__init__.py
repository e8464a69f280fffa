"""gRPC server wiring: the error table, interceptors, metrics and the app."""
