"""Performance suite of cbmir: ``python -m bench.run [--quick]`` writes RESULTS.md and results.json.

In-process ceilings (matmul, embedder, FAISS), the real service against a bare FastAPI
"HTTP floor" under the same load, and the 1M-item scale checks. Ratios are measured side by
side in one run because absolute times drift on shared machines.
"""
