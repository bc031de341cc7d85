"""The ``mailgate`` command: one entry point, one small function per subcommand.

Subcommands import their implementation lazily so that, for example, the
operator's dependencies are never loaded by a gateway process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _crd(args: argparse.Namespace) -> int:
    from .crd import render_crd_yaml

    sys.stdout.write(render_crd_yaml())
    return 0


def _add_crd(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("crd", help="print the SmtpAccount CustomResourceDefinition YAML")
    parser.set_defaults(func=_crd)


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_crd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailgate", description="A Kubernetes-native mail gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
