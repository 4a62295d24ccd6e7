"""Serving from the cache: ``git upload-pack --stateless-rpc`` streamed over a loopback backend."""
