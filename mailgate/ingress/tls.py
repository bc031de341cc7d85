"""The listener's TLS certificate, read from files and re-read when they change.

In a cluster the certificate is a Secret mounted as files (often renewed by
cert-manager); the kubelet swaps the files in place. Checking their
modification times at most every few seconds, when a session starts, picks a
renewal up without a restart or a watcher task. The new pair is loaded into
the same ``SSLContext`` (the implicit-TLS listener holds that object for its
lifetime), after a trial load into a scratch context: a failed reload (a
half-written pair) keeps serving the previous certificate and logs why.
"""

from __future__ import annotations

import logging
import os
import ssl
import time

log = logging.getLogger("mailgate.ingress.tls")

CHECK_INTERVAL = 5.0


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side context with the library's secure defaults (TLS 1.2+); clients are not asked for certificates.

    One TLS 1.3 session ticket per handshake instead of OpenSSL's two: a client resumes with one, and each ticket
    is encrypted and written on every connection (the apps behind the ingress open one per message).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.num_tickets = 1
    return context


class CertificateFiles:
    """The current ``SSLContext`` for a certificate and key file pair."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._stamp = self._mtimes()
        self._context = server_context(cert_file, key_file)  # fails loudly at start: a bad pair is a config error
        self._checked = time.monotonic()

    def _mtimes(self) -> tuple[float, float]:
        return os.stat(self.cert_file).st_mtime, os.stat(self.key_file).st_mtime

    def context(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL:
            return self._context
        self._checked = now
        try:
            stamp = self._mtimes()
            if stamp != self._stamp:
                server_context(self.cert_file, self.key_file)  # trial: never leave the live context half-loaded
                self._context.load_cert_chain(self.cert_file, self.key_file)
                self._stamp = stamp
                log.info("SMTP ingress certificate reloaded from %s", self.cert_file)
        except (OSError, ssl.SSLError) as exc:
            log.warning("SMTP ingress certificate reload failed, keeping the previous one: %s", exc)
        return self._context
