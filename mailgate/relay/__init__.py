"""The relay core: accounts, routing, checks, limits, sending and outcomes, with no protocol in it.

Both front doors (the HTTP send API in ``mailgate.gateway``, the SMTP
ingress in ``mailgate.ingress``) turn their input into an
``envelope.OutgoingMessage`` and an ``identity.Identity`` and ask
``core.Relay``; what comes back is one ``outcomes.Outcome``, which each door
maps to its own protocol. The core imports only the pool, the account model
(``spec``, ``snapshot``) and the queue's storage: a test
(tests/unit/test_layering.py) proves that importing it loads neither aiohttp
nor aiosmtpd. docs/architecture.md is the map.
"""
