"""End-to-end encryption support: device and cross-signing keys, one-time
and fallback keys, to-device messages, device-list changes, key backup.
The server stores and relays; it never sees plaintext."""
