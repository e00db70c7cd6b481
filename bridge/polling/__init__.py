"""Polling: a source end to end (engine), what an answer means (assess, diff), and when."""
