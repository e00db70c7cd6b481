"""Delivering: signing, the retry policy, body templates, and the webhook workers."""
