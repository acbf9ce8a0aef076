"""Load bench for presence-relay: real WebSocket clients, latency histograms, targets.

`python -m bench.load --help`; see bench/README.md.
"""
