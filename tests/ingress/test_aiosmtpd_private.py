"""The private members of aiosmtpd the ingress relies on, by name: an aiosmtpd upgrade that moves one fails here.

``ingress/session.py`` uses aiosmtpd's public hooks (``handle_MAIL``,
``handle_RCPT``, ``handle_DATA``, ``auth_*`` methods, ``smtp_*`` commands)
where they suffice. What remains (its own ``__init__`` without the
per-connection introspection, ``smtp_DATA`` reading the text with a size
cap, the STARTTLS switch-over, the command timeout) touches the members
below; pyproject.toml pins aiosmtpd to the minor version these were read
from (``>=1.4.6,<1.5``).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from aiosmtpd.smtp import SMTP

import mailgate.ingress.session as session_module

# Methods it calls or overrides, then state SMTP.__init__ sets up (IngressSMTP.__init__ sets it itself) or
# the protocol keeps.
RELIED_UPON = frozenset(
    """
    _getaddr _set_post_data_state _set_rset_state _reset_timeout _timeout_cb _handle_hooks _call_handler_hook
    _create_session _cb_client_connected _enforce_call_limit
    _ehlo_hook_ver _smtp_methods _tls_protocol _original_transport _tls_handshake_okay _reader _writer
    _handler_coroutine _timeout_handle _timeout_duration _decode_data _call_limit_default _call_limit_base
    _proxy_timeout _authenticator _auth_methods _auth_require_tls _auth_required _auth_callback
    """.split()
)


def aiosmtpd_members() -> set[str]:
    """Private names of aiosmtpd's SMTP: its class's, and those its code sets on an instance (in
    ``__init__``, ``connection_made``, the STARTTLS switch-over...), read from the installed source."""
    own = {n for n in dir(SMTP) if n.startswith("_") and not n.startswith("__")}
    source = Path(inspect.getfile(SMTP)).read_text()
    return own | set(re.findall(r"self\.(_[a-z][a-z0-9_]*)\s*(?::[^=\n]*)?=[^=]", source))


def used_by_the_ingress() -> set[str]:
    text = Path(session_module.__file__).read_text()
    return set(re.findall(r"(?:self|server|super\(\))\.(_[a-z][a-z0-9_]*)", text))


def test_every_relied_upon_member_exists_in_this_aiosmtpd() -> None:
    members = aiosmtpd_members()
    used = used_by_the_ingress() & RELIED_UPON
    assert not sorted(used - members), "aiosmtpd no longer has these members ingress/session.py uses"


def test_the_list_names_every_aiosmtpd_member_the_ingress_touches() -> None:
    """A private aiosmtpd member used without being listed here would escape the check above; a listed one no
    longer used is a stale entry."""
    used = used_by_the_ingress()
    assert not sorted((used & aiosmtpd_members()) - RELIED_UPON)
    assert not sorted(RELIED_UPON - used)


def test_the_checks_can_fail() -> None:
    assert "_no_such_member" not in aiosmtpd_members()
    assert "_set_post_data_state" in used_by_the_ingress() & aiosmtpd_members()
