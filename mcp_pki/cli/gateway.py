"""``mcp-pki gateway``."""

import os
from pathlib import Path

import click

from mcp_pki.cli.common import Settings, now, pass_settings

_FILE = click.Path(dir_okay=False, path_type=Path)


def _seconds(text: str, option: str) -> float:
    """``90s`` or a duration (``30m``, ``2h``): what an idle timeout is written as."""
    from mcp_pki.durations import parse_duration
    from mcp_pki.errors import InvalidInput

    stripped = text.strip().lower()
    if stripped.endswith("s") and stripped[:-1].isdigit() and stripped[:-1].isascii():
        seconds = float(stripped[:-1])
    else:
        try:
            seconds = parse_duration(stripped).total_seconds()
        except InvalidInput:
            raise InvalidInput(f"invalid {option} {text!r}: write e.g. 90s, 30m or 2h") from None
    if seconds <= 0:
        raise InvalidInput(f"invalid {option} {text!r}: must be greater than zero")
    return seconds


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("command", nargs=-1, metavar="-- COMMAND [ARGS]...")
@click.option("--as", "ref", metavar="REF", help="The server certificate (name or serial) whose files `issue` wrote; "
              "trusts <home>/ca.crt and checks <home>/crl.pem.")
@click.option("--cert", "cert_file", type=_FILE, metavar="FILE", help="Server certificate chain (PEM) [env TLS_CERT].")
@click.option("--key", "key_file", type=_FILE, metavar="FILE", help="Its private key (PEM) [env TLS_KEY].")
@click.option("--ca", "ca_file", type=_FILE, metavar="FILE",
              help="CA certificate(s) client certificates must chain to [env TLS_CA].")
@click.option("--crl", "crl_file", type=_FILE, metavar="FILE",
              help="CRLs of every CA in the chain (crl.pem), reloaded when it changes [env TLS_CRL].")
@click.option("--upstream", "upstream_url", metavar="URL",
              help="Relay to this streamable-HTTP MCP server instead of running COMMAND.")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT", help="Where to listen.")
@click.option("--crl-refresh", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="How often to look for a changed CRL or policy file.")
@click.option("--fail-on-stale-crl", is_flag=True, help="Refuse every client while the CRL is past its nextUpdate.")
@click.option("--policy", "policy_file", type=_FILE, metavar="FILE",
              help="Per-role tool policy (YAML), reloaded when it changes [default: allow every valid client].")
@click.option("--audit-log", "audit_log", type=_FILE, metavar="FILE",
              help="Append the hash-chained tool-call log here, signed now and then with the server's key "
              "[default: stderr, unsigned].")
@click.option("--session-idle", default="30m", show_default=True, metavar="DUR",
              help="End a session (and its process) after this long without requests (90s, 30m, 2h).")
@click.option("--max-sessions", type=click.IntRange(min=1), default=100, show_default=True,
              help="Open sessions at most; more get HTTP 503.")
@click.option("--max-sessions-per-client", type=click.IntRange(min=1), default=10, show_default=True,
              help="Open sessions at most for one client certificate; more get HTTP 503.")
@click.option("--max-body", type=click.IntRange(min=1024), default=4 * 1024 * 1024, show_default=True,
              metavar="BYTES", help="Largest request body; larger gets HTTP 413.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details (and the servers' stderr) to stderr.")
@pass_settings
def gateway(
    settings: Settings, command: tuple[str, ...], ref: str | None, cert_file: Path | None, key_file: Path | None,
    ca_file: Path | None, crl_file: Path | None, upstream_url: str | None, listen: str, crl_refresh: float,
    fail_on_stale_crl: bool, policy_file: Path | None, audit_log: Path | None, session_idle: str,
    max_sessions: int, max_sessions_per_client: int, max_body: int, verbose: bool,
) -> None:
    """Serve a stdio MCP server over HTTPS, requiring client certificates from our CA.

    Each MCP session gets its own COMMAND process, ended on DELETE, after --session-idle,
    when the client's certificate is revoked, or at shutdown. With --upstream URL the
    gateway relays to a streamable-HTTP MCP server instead (plain HTTP on loopback), adding
    the verified identity as X-Client-DN, X-Client-Serial, X-Client-Fingerprint and
    X-Client-Verify and dropping any such header a client sent.

    The CRL file is re-read within --crl-refresh seconds of a change: new handshakes use it
    and every request is checked against it, so `mcp-pki revoke` shuts a client out of open
    connections and sessions too. --policy limits tools, resources and prompts per role
    (certificate OU) or name (CN); the audit log has one hash-chained JSON line per MCP
    request and checkpoints signed with the server's key (check it with `mcp-pki audit
    verify --file FILE`). Needs the MCP Python SDK and uvicorn (pip install 'mcp-pki[gateway]').

    \b
    Examples:
      mcp-pki gateway --as files --policy policy.yaml --audit-log calls.jsonl -- python server.py
      mcp-pki gateway --cert tls.crt --key tls.key --ca ca.crt --crl crl.pem --upstream http://127.0.0.1:8000/mcp
      TLS_CERT=... TLS_KEY=... TLS_CA=... TLS_CRL=... mcp-pki gateway -- npx my-mcp-server
    Exit codes: 0 after SIGTERM or SIGINT; 1 when it cannot start (one "Error: ..." line).
    """
    from mcp_pki.gateway.start import GatewayOptions, configure_logging, prepare_gateway
    from mcp_pki.gateway.tls import TlsOptions

    options = GatewayOptions(
        command=command, upstream_url=upstream_url, listen=listen, crl_refresh=crl_refresh,
        fail_on_stale_crl=fail_on_stale_crl, policy_file=policy_file, audit_log=audit_log,
        session_idle=_seconds(session_idle, "--session-idle"), max_sessions=max_sessions,
        max_sessions_per_client=max_sessions_per_client, max_body=max_body,
    )
    tls = TlsOptions(ref=ref, cert_file=cert_file, key_file=key_file, ca_file=ca_file, crl_file=crl_file)
    prepared = prepare_gateway(settings.home(), tls, options, os.environ, now=now())
    configure_logging(verbose)
    target = upstream_url or " ".join(command)
    crl = prepared.tls.files.crl_file
    click.echo(f"mcp-pki gateway: serving {target} at {prepared.url} as {prepared.tls.identity.label}; "
               f"clients must chain to {prepared.tls.files.ca_file}"
               + (f", CRL {crl} checked every {crl_refresh:g} s" if crl else ""), err=True)
    click.echo(f"mcp-pki gateway: {prepared.describe_policy()}", err=True)
    for warning in prepared.warnings:
        click.echo(f"mcp-pki gateway: warning: {warning}", err=True)
    prepared.run(verbose=verbose)


def verify_call_log(path: Path, ca_file: Path | None, home_root: Path) -> None:
    """``mcp-pki audit verify --file FILE``: the gateway's tool-call log, line by line, and
    its checkpoints, signed by a gateway certificate that chains to our root (`home_root`,
    the home's ca.crt, unless --ca FILE)."""
    from mcp_pki import mtls
    from mcp_pki.cli.terminal import shown
    from mcp_pki.errors import InvalidInput, PkiError
    from mcp_pki.gateway.calllog import verify_file
    from mcp_pki.pki.inspect import load_pem_certificates

    anchors_file = ca_file or home_root
    try:
        anchors = load_pem_certificates(anchors_file.read_bytes())
    except FileNotFoundError:
        if ca_file is not None:
            raise PkiError(f"cannot read the CA file {ca_file}: no such file") from None
        raise PkiError(f"no CA to check the log's signed checkpoints against: {home_root} is missing; "
                       "pass --ca FILE (our root certificate, ca.crt)") from None
    except OSError as exc:
        raise PkiError(f"cannot read the CA file {anchors_file}: {(exc.strerror or str(exc)).lower()}") from None
    except InvalidInput as exc:
        raise PkiError(f"cannot use the CA file {anchors_file}: {exc}") from None
    if not any(mtls.is_ca(anchor) for anchor in anchors):
        raise PkiError(f"the CA file {anchors_file} holds no CA certificate: give our root (ca.crt)")
    verdict = verify_file(path, anchors)
    if not verdict.ok:
        raise PkiError(f"tool-call log broken: {verdict.problem} ({verdict.lines} line(s) before it are intact)")
    if verdict.lines and not verdict.checkpoints:
        # A gateway of this version signs within a second of a call and when it stops: a log
        # with lines and no checkpoint was cut before its first one, rewritten without the
        # key, or written by an older version, and nothing in it can be trusted more.
        raise PkiError(f"tool-call log not signed: none of its {verdict.lines} line(s) is vouched for by a "
                       "signed checkpoint, so a rewrite of the whole file would look the same (a running "
                       "gateway signs within a second of a call: check again if one writes this file)")
    summary = f"tool-call log intact: {verdict.lines} lines, {verdict.checkpoints} signed checkpoints"
    if verdict.last_signed is not None:
        summary += f" (last signed {verdict.last_signed})"
    click.echo(shown(summary))
    if verdict.unsigned_tail:
        click.echo(f"unsigned tail: {verdict.unsigned_tail} lines after the last signed checkpoint, "
                   "only as safe as access to the file")
