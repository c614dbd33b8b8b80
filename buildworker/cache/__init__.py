"""Host-side caches guests reach through a forward (opt-in per host, ``[cache]``)."""
