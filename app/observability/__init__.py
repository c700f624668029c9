"""Metrics (/metrics) and structured logs: what an operations team reads to run Stockwire."""
