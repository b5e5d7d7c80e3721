"""Streams, tokens, filters, the notifier and /sync."""
