"""The Retriever and what it owns: batcher, store, snapshots, ingest, search, items.

No status codes in here: what this package refuses, :mod:`app.api.errors` answers.
"""
