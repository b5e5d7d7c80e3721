"""Rooms: versions, auth rules, membership, creating and sending events."""
