"""Backends behind two small interfaces: the presence store and the broker.

Each has a memory implementation (the embedded default) and, from the Redis issue on, a
Redis one; tests/test_backends_contract.py runs the same contract against every one.
"""
