#!/usr/bin/env python3
"""A real mutual-TLS handshake over loopback between two certificate folders.

    handshake.py --server-dir D1 --client-dir D2 [--crl FILE] [--server-name NAME]

Each folder holds tls.crt (leaf then intermediates), tls.key and ca.crt (root), as written by
`mcp-pki issue`. The server requires a client certificate and trusts D1/ca.crt; the client
trusts D2/ca.crt and checks the server's name. Both sides verify with VERIFY_X509_STRICT on
(what Python 3.13's default context does). With --crl, the server also checks the client
certificate against the CRLs in FILE (for example <home>/crl.pem, which has every CA's CRL).

Standard library only. Exit 0 when the handshake succeeds, 1 with one line on stderr when it
does not, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import threading

TIMEOUT = 5.0  # seconds, for every socket operation on both sides
GREETING = b"mcp-pki handshake ok\n"


class HandshakeError(Exception):
    pass


def _names(rdns, key):
    """Values of one attribute (e.g. 'commonName') in getpeercert()'s subject, in order."""
    return [value for rdn in rdns or () for (k, value) in rdn if k == key]


def _dn(rdns):
    return ", ".join(f"{k}={v}" for rdn in rdns or () for (k, v) in rdn) or "(empty)"


def _sans(cert):
    sans = cert.get("subjectAltName", ())
    return ", ".join(f"{kind}:{value}" for kind, value in sans) or "(none)"


def _files(folder):
    paths = {name: os.path.join(folder, name) for name in ("tls.crt", "tls.key", "ca.crt")}
    for path in paths.values():
        if not os.path.isfile(path):
            raise HandshakeError(f"missing file {path}")
    return paths


def server_context(folder, crl=None):
    files = _files(folder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        ctx.load_cert_chain(files["tls.crt"], files["tls.key"])
        ctx.load_verify_locations(cafile=files["ca.crt"])
        if crl:
            ctx.load_verify_locations(cafile=crl)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    except (ssl.SSLError, OSError) as exc:
        raise HandshakeError(f"server cannot load its files from {folder}: {exc}") from exc
    return ctx


def client_context(folder):
    files = _files(folder)
    try:
        ctx = ssl.create_default_context(cafile=files["ca.crt"])
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_cert_chain(files["tls.crt"], files["tls.key"])
    except (ssl.SSLError, OSError) as exc:
        raise HandshakeError(f"client cannot load its files from {folder}: {exc}") from exc
    return ctx


def serve_once(listener, ctx, result):
    """Accept one connection, complete the handshake, report the client's identity."""
    try:
        conn, _ = listener.accept()
    except OSError as exc:
        result["error"] = f"server: no connection: {exc}"
        return
    try:
        conn.settimeout(TIMEOUT)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            cert = tls.getpeercert()
            subject = cert.get("subject", ())
            cns = _names(subject, "commonName")
            roles = _names(subject, "organizationalUnitName")
            result["lines"] = [
                f"server: client certificate verified: CN={', '.join(cns) or '(none)'}",
                f"server: client roles (OU): {', '.join(roles) or '(none)'}",
                f"server: client SANs: {_sans(cert)}",
                f"server: client serial: {cert.get('serialNumber', '?').lower()}",
            ]
            tls.sendall(GREETING)
    except (ssl.SSLError, OSError) as exc:
        result["error"] = f"server side: {_reason(exc)}"
    finally:
        conn.close()


def _reason(exc):
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timed out after {TIMEOUT:g}s"
    return str(exc) or type(exc).__name__


def handshake(server_dir, client_dir, server_name="127.0.0.1", crl=None):
    sctx = server_context(server_dir, crl)
    cctx = client_context(client_dir)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.settimeout(TIMEOUT)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    server_result: dict = {}
    thread = threading.Thread(target=serve_once, args=(listener, sctx, server_result), daemon=True)
    thread.start()

    client_lines: list[str] = []
    client_error = None
    client_rejected_server = False
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            cctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            cert = tls.getpeercert()
            cipher = tls.cipher()
            client_lines = [
                f"client: connected to 127.0.0.1:{port} as {server_name!r}",
                f"client: server subject: {_dn(cert.get('subject'))}",
                f"client: server SANs: {_sans(cert)}",
                f"client: {tls.version()}, cipher {cipher[0] if cipher else '?'}",
            ]
            # Under TLS 1.3 the server checks the client certificate after the client's
            # side of the handshake is done: only the server's reply proves it accepted us.
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = tls.recv(64)
                if not chunk:
                    break
                reply += chunk
            if reply != GREETING:
                client_error = "client side: the server closed the connection without a reply"
    except (ssl.SSLError, OSError) as exc:
        client_rejected_server = isinstance(exc, ssl.SSLCertVerificationError)
        client_error = f"client side: {_reason(exc)}"
    finally:
        thread.join(TIMEOUT + 1)
        listener.close()

    if thread.is_alive():
        raise HandshakeError("server thread did not finish in time")
    # Report the side that refused: the client when it could not verify the server, else the
    # server, whose reason is the useful one when it refused the client certificate.
    if client_rejected_server:
        raise HandshakeError(client_error)
    if "error" in server_result:
        raise HandshakeError(server_result["error"])
    if client_error:
        raise HandshakeError(client_error)
    return server_result.get("lines", []) + client_lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-dir", required=True,
                        help="folder with the server's tls.crt, tls.key, ca.crt")
    parser.add_argument("--client-dir", required=True,
                        help="folder with the client's tls.crt, tls.key, ca.crt")
    parser.add_argument("--server-name", default="127.0.0.1",
                        help="name the client checks in the server certificate (default: 127.0.0.1)")
    parser.add_argument("--crl", help="PEM file of CRLs the server checks the client against")
    args = parser.parse_args(argv)
    try:
        lines = handshake(args.server_dir, args.client_dir, args.server_name, args.crl)
    except HandshakeError as exc:
        print(f"Error: handshake failed: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    print("mutual TLS handshake: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
