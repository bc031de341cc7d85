"""SMTP ingress: an SMTP listener in the gateway for apps that only speak SMTP.

Sessions are authenticated (SMTP AUTH with per-account client logins) or come
from trusted networks; each message is routed to an account (``routing``) and
relayed through the same relay core, limits and pool as the HTTP API.

Nothing is imported here on purpose: ``mailgate.cli`` builds its parsers from
``ingress.options`` (standard library only) without loading aiosmtpd or the
gateway. Start it with ``ingress.attach.attach(gateway, options)``.
"""
