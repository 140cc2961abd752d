"""HTTP routes, one module per resource; each is thin over :class:`app.retriever.Retriever`."""

from app.routes import health, images, ingest, metrics, search

routers = [health.router, ingest.router, search.router, images.router, metrics.router]

__all__ = ["routers"]
