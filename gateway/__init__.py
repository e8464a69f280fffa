"""Lucid REST gateway: the seed's REST/JSON surface transcoded onto gRPC from descriptors."""
