"""Exit codes and one-line errors, the same for gpuaudit-agent, gpuaudit-collector and
gpuaudit-verify (docs/operator-guide.md, "Exit codes and errors").

Each code means one thing, so a script or a supervisor can act on it without reading the
message; the message, always one line on stderr starting with ``error:``, says what is
wrong and what to do. A traceback is shown only with ``--verbose``.

Here, not in a command's package, because ``gpuaudit-verify`` needs nothing but the
``attestation`` package.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attestation.errors import Error

OK = 0
# The command ran and its answer is no: findings with --fail-on-findings, a bundle that
# does not verify, a log audit that does not match, statements the collector refused,
# something asked for that is not there (a finding id, a key).
FAILED = 1
# What the command was given is wrong: arguments, a configuration key or value, a file's
# contents (a trace, a tenants file, a certificate), a join token the collector refuses,
# a certificate for another node. Fix the command or the configuration.
USAGE = 2
# Something the command needs is not there or cannot be reached: a file or folder, a free
# port, the collector, Prometheus, the NVIDIA driver, the store. Fix the machine or the
# network, or try again later; the command and configuration may be right.
UNAVAILABLE = 3
# An error the program does not know (a bug): the one line names it; --verbose shows the
# traceback to report.
INTERNAL = 4
# Stopped by Ctrl-C or SIGTERM before it finished; the one line says what was left undone.
INTERRUPTED = 130

CODES: tuple[tuple[int, str], ...] = (
    (OK, "ok"),
    (FAILED, "no: findings (--fail-on-findings), not verified, refused, not found"),
    (USAGE, "usage or configuration: flags, config, file contents, token, certificate"),
    (UNAVAILABLE, "environment: file or folder missing, port in use, peer unreachable"),
    (INTERNAL, "unexpected error (a bug): rerun with --verbose for the traceback"),
    (INTERRUPTED, "interrupted (Ctrl-C, SIGTERM): says what was left undone"),
)


def epilog(extra: str = "") -> str:
    """The exit-code table for a command's ``--help``."""
    table = "\n".join(["exit codes:"] + [f"  {code:>3}  {text}" for code, text in CODES])
    prose = (f"{extra} " if extra else "") + "Every error is one line on stderr starting with 'error:'."
    return f"{table}\n\n{prose}"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that a paragraph with line breaks (the exit-code table)
    keeps them; paragraphs are separated by a blank line; and a subcommand that may be left
    out shows in brackets in the usage line (``[ACTION ...]``; argparse shows it as required)."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        text = super()._format_args(action, default_metavar)
        return f"[{text}]" if action.nargs == argparse.PARSER and not action.required else text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            "\n".join(indent + line for line in para.splitlines())
            if "\n" in para
            else super(HelpFormatter, self)._fill_text(para, width, indent)
            for para in text.split("\n\n")
        )


def add_epilogs(parser: argparse.ArgumentParser, text: str) -> None:
    """Give ``parser`` and every subcommand under it the exit-code table (a subcommand's own
    epilog comes first)."""
    parser.formatter_class = HelpFormatter
    parser.epilog = f"{parser.epilog}\n\n{text}" if parser.epilog else text
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                add_epilogs(sub, text)


class CliError(Error):
    """An error a command reports as one ``error:`` line, exiting with ``code``."""

    reason = "command_failed"

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def usage(message: str) -> CliError:
    return CliError(USAGE, message)


def unavailable(message: str) -> CliError:
    return CliError(UNAVAILABLE, message)


def one_line(text: str) -> str:
    """``text`` on one line: a diagnostics() remedy on its own line follows after a space
    (or '; ' where the line before ends without punctuation)."""
    out = ""
    for line in (x.strip() for x in str(text).splitlines()):
        if not line:
            continue
        if out:
            if out[-1] in ".:;!?":
                out += " "
            else:
                out += ". " if line[0].isupper() else "; "
        out += line
    return out


def os_error_text(exc: OSError) -> str:
    """``cannot read /x: No such file or directory`` for an OSError that names its file."""
    what = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {what}"
    return what


def print_error(message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


def run_command(
    func: Callable[[], int],
    *,
    verbose: bool,
    classify: Callable[[BaseException], CliError | None] | None = None,
) -> int:
    """Run a command; whatever escapes it becomes one ``error:`` line and an exit code:
    ``CliError`` its own, what ``classify`` recognises, an OSError naming a file
    UNAVAILABLE, Ctrl-C INTERRUPTED, anything else INTERNAL (with the traceback only when
    ``verbose``)."""
    try:
        return int(func())
    except CliError as exc:
        print_error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        print_error("interrupted")
        return INTERRUPTED
    except Exception as exc:
        try:
            known = classify(exc) if classify is not None else None
        except Exception:  # a classifier that fails must not hide the error it was given
            known = None
        if known is None and isinstance(exc, OSError) and (exc.filename is not None or exc.errno in _ENV_ERRNOS):
            known = unavailable(os_error_text(exc))
        if known is not None:
            if verbose:
                traceback.print_exc()
            print_error(str(known))
            return known.code
        if verbose:
            traceback.print_exc()
        print_error(
            f"unexpected {type(exc).__name__}: {one_line(str(exc)) or '(no message)'} "
            "(rerun with --verbose for the traceback, and report it)"
        )
        return INTERNAL


_ENV_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ENOSPC, errno.EACCES, errno.EROFS})


@dataclass(frozen=True)
class Address:
    host: str
    port: int


def parse_address(text: str, what: str) -> Address:
    """``HOST:PORT`` (``[::1]:7443`` for IPv6); a CliError naming ``what`` when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise usage(f"{what} {text!r} is not HOST:PORT (e.g. 127.0.0.1:7443)")
    return Address(host.strip("[]"), int(port))


def check_port_free(text: str, what: str) -> None:
    """Raise a CliError when the address ``text`` (``HOST:PORT``) cannot be listened on:
    another process holds the port, the host is not this machine's, the port is privileged.
    Port 0 (any free port) is always free. Checked before a command creates anything, so a
    collector that cannot start leaves nothing behind."""
    addr = parse_address(text, what)
    if addr.port == 0:
        return
    try:
        infos = socket.getaddrinfo(addr.host or None, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise usage(f"{what} {text}: cannot resolve {addr.host!r} ({exc.strerror})") from exc
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            # As a server binds: SO_REUSEADDR, so a port left in TIME_WAIT counts as free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise unavailable(
                        f"{what} {text}: the port is in use by another process (find it with `ss -ltnp "
                        f"'sport = :{addr.port}'`), or choose another port"
                    ) from exc
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise unavailable(f"{what} {text}: {addr.host} is not an address of this machine") from exc
                if exc.errno == errno.EACCES:
                    raise unavailable(
                        f"{what} {text}: permission denied (ports below 1024 need privileges); choose another port"
                    ) from exc
                raise unavailable(f"{what} {text}: cannot listen: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class TlsFiles:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    common_names: tuple[str, ...]  # of the certificate


def read_tls_files(ca: tuple[str, Path], cert: tuple[str, Path], key: tuple[str, Path]) -> TlsFiles:
    """Read and check a CA bundle, a certificate and its private key, each given as
    (setting name, path): files that cannot be read are UNAVAILABLE, files that are not what
    they should be (or a key that is not the certificate's) USAGE, each naming the setting."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    def read(name: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise unavailable(f"cannot read {name} {path}: {exc.strerror or exc}") from exc

    ca_pem, cert_pem, key_pem = read(*ca), read(*cert), read(*key)
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise usage(f"{ca[0]} {ca[1]} is not a PEM certificate (the CA's ca.crt)") from exc
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise usage(f"{cert[0]} {cert[1]} is not a PEM certificate") from exc
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise usage(f"{key[0]} {key[1]} is not an unencrypted PEM private key") from exc

    def spki(k: object) -> bytes:
        return k.public_bytes(  # type: ignore[attr-defined, no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    if spki(private.public_key()) != spki(certificate.public_key()):
        raise usage(f"{key[0]} {key[1]} is not the key of {cert[0]} {cert[1]}: give the .key issued with it")
    names = tuple(str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return TlsFiles(ca_pem, cert_pem, key_pem, names)
