"""Accounts: passwords, access tokens, user-interactive auth, registration, login, devices."""
