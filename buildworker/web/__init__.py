"""The web pages of the API tier: job lists, job pages with a live log, submit, account.

Server-rendered (Jinja2), a little plain JavaScript from static files (no build step, no
inline script: the Content-Security-Policy forbids it). `buildworker.web.mount.install`
adds everything to the FastAPI app; `buildworker.web.urls` is import-light on purpose, so
the worker, the triggers and the CLI can build page URLs without loading the web stack.
"""
