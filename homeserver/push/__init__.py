"""Push notifications: push rules, their evaluation, unread counts and HTTP pushers."""
