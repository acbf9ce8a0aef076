"""The sans-I/O core: data model, wire codec, document state machine, batcher.

Nothing in this package imports asyncio, websockets or redis, and nothing reads a clock:
every operation takes `now_ms` as an argument (a test in tests/test_layers.py keeps it so).
"""
