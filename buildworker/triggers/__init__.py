"""Build triggers (email and webhook), fired by the API tier when jobs and groups end.

- `render`: pure — conditions, group status, subjects, bodies, webhook payloads.
- `dispatch`: records deliveries in the transaction that makes a job terminal.
- `email`, `webhook`: the two delivery adapters (smtplib, httpx + Ed25519).
- `sender`: the background thread that drains `trigger_deliveries` with retries.
"""
