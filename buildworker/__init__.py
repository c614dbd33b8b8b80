"""buildworker: a builds.sr.ht-compatible build farm (API tier, RabbitMQ queue, one VM per job)."""

__version__ = "0.1.0"
