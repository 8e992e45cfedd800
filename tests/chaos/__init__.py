"""Crash, signal and idempotency tests against a real server subprocess.

``CHAOS_ROUNDS`` (default 24) sets the kill -9 rounds of test_crash.py and ``CHAOS_SEED``
replays a run: every test prints the seed it used. ``make chaos`` runs many more rounds.
"""
