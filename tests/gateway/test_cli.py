"""``mailgate gateway`` flags: what they turn into, and the usage errors that stop it before it listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.cli import build_parser
from mailgate.gateway import main as gateway_main
from mailgate.gateway.auth import AllowAnyone


def parse(*argv: str):
    return build_parser().parse_args(["gateway", *argv])


def test_in_cluster_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-admin\n")
    monkeypatch.setenv("POD_NAME", "mailgate-gateway-7d9f")
    args = parse("--in-cluster", "--admin-token-file", str(token))
    options = gateway_main.options(args)
    assert (options.host, options.port, options.admin_port) == ("0.0.0.0", 8080, 8081)
    assert options.admin_token == "s3cret-admin"
    assert options.hostname == "mailgate-gateway-7d9f"
    assert options.shutdown_delay == gateway_main.IN_CLUSTER_SHUTDOWN_DELAY
    assert gateway_main.static_authenticator(args) is None  # TokenReview, built on the running loop
    assert "s3cret-admin" not in repr(options)


def test_outside_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gateway_main.ADMIN_TOKEN_ENV, "from-env")
    args = parse("--insecure-no-auth", "--port", "0")
    options = gateway_main.options(args)
    assert (options.host, options.shutdown_delay, options.admin_token) == ("127.0.0.1", 0.0, "from-env")
    assert isinstance(gateway_main.static_authenticator(args), AllowAnyone)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--admin-token-file", "/nonexistent/token", "--insecure-no-auth"], "cannot read --admin-token-file"),
        (["--insecure-no-auth"], "the admin API needs a token"),
        ([], "choose how callers authenticate"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(gateway_main.ADMIN_TOKEN_ENV, raising=False)
    assert gateway_main.main(parse(*argv)) == 2
    assert message in capsys.readouterr().err


def test_peer_relay_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A gateway relays SMTP to peers' admin API: their port and the CA of their certificates can be named."""
    monkeypatch.setenv(gateway_main.ADMIN_TOKEN_ENV, "from-env")
    ca = tmp_path / "admin-ca.pem"
    args = parse("--insecure-no-auth", "--peer-admin-port", "9443", "--admin-ca-file", str(ca))
    options = gateway_main.options(args)
    assert (options.peer_admin_port, options.admin_ca_file) == (9443, str(ca))
    defaults = gateway_main.options(parse("--insecure-no-auth"))
    assert (defaults.peer_admin_port, defaults.admin_ca_file) == (None, None)  # peers share this pod's port and chain


def test_the_gateway_process_freezes_pushed_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mailgate gateway`` keeps full snapshots out of the cycle collector's walks (see gcpause);
    an embedded Gateway (tests, ``mailgate serve``) leaves the interpreter's collector alone."""
    from mailgate.gateway.app import Gateway, GatewayOptions

    monkeypatch.setenv(gateway_main.ADMIN_TOKEN_ENV, "from-env")
    options = gateway_main.options(parse("--insecure-no-auth"))
    assert options.freeze_configuration
    assert Gateway(AllowAnyone(), options).admin.freeze
    assert not Gateway(AllowAnyone(), GatewayOptions(admin_token="t")).admin.freeze
