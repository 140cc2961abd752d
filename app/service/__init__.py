"""The Retriever and what it owns: batcher, store, snapshots, ingest; no HTTP in here."""
