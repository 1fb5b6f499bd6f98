"""The sandbox payment gateway as its own process: a real gateway's test mode.

`python -m server.sandbox --port P --data-dir DIR --webhook-secret S` serves an HTTP API
(`app.py`) over a durable ledger in SQLite (`ledger.py`): every payment, idempotency key and
ledger entry is committed (WAL, `synchronous=FULL`) before the HTTP answer, so when a web
process -- or the gateway itself -- is killed, the record of what was charged survives and
a test can read the money side of the crash.

Same test cards and rules as the in-process `server.commerce.payments.SandboxGateway`.
The platform talks to it only over HTTP (`server.commerce.gateway_client.HttpGateway`);
`server.core.embedded.SandboxGatewayServer` starts it for tests and local runs.
"""
