"""The gateway's HTTP side: one Starlette application (``app.py``) served by uvicorn (``server.py``)
in a process of its own, so that nothing a client does on the API can delay ingest and acks.

Modules: ``app`` builds the application from the route modules (``fhir_api``: the FHIR R4 API,
``ops``: health, metrics, observatory counts); ``auth`` holds accounts, roles, sessions and
tokens, ``access`` is the one request-level hook that asks it (``require(permission)``);
``errors`` turns every failure into an ``OperationOutcome``; ``server`` runs it, hardened for
an open network (timeouts, bounded connections, TLS); ``tls`` makes a local certificate.
"""
