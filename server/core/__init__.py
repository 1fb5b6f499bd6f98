"""What every package may use and that knows no feature: settings, the clock, refusals and
their HTTP statuses, API errors, msgspec wire helpers and the OpenAPI registry, the outbox
(Redis Streams), embedded Redis, PII encryption, TLS and development secrets."""
