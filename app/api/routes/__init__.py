"""HTTP routes, one module per resource; each is thin over the service
(:class:`app.service.retriever.Retriever`)."""

from app.api.routes import gallery, health, images, ingest, metrics, render, search, web

routers = [
    health.router, ingest.router, search.router, render.router, gallery.router, images.router,
    metrics.router, web.router,
]

__all__ = ["routers"]
