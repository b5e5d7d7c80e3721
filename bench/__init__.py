"""Benchmark: this homeserver against Synapse on the same workloads (`python3 -m bench`)."""
