"""HTTP: routes, schemas, dependencies, middleware, and errors.py, the one place where
exceptions become status codes. Thin over :mod:`app.service`."""
