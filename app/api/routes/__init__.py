"""HTTP routes, one module per resource; each is thin over the service
(:class:`app.service.retriever.Retriever`)."""

from app.api.routes import health, images, ingest, metrics, search

routers = [health.router, ingest.router, search.router, images.router, metrics.router]

__all__ = ["routers"]
