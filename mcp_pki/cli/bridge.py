"""``mcp-pki bridge``."""

from datetime import timedelta
from pathlib import Path

import click

from mcp_pki.cli.common import Settings, now, pass_settings
from mcp_pki.cli.terminal import shown

# Warn at start-up when the certificate has less left than this: the host's logs show it.
EXPIRY_WARNING = timedelta(days=7)


@click.command()
@click.argument("url")
@click.option("--as", "ref", metavar="REF", help="The client certificate (name or serial) whose files `issue` wrote.")
@click.option("--cert", "cert_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Client certificate chain (PEM, as tls.crt), instead of --as.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Its private key (unencrypted PEM, as tls.key).")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The only CA to trust for the server [default: the ca.crt beside the certificate, "
                   "else <home>/ca.crt].")
@click.option("-v", "--verbose", is_flag=True, help="Log connection details to stderr.")
@pass_settings
def bridge(
    settings: Settings, url: str, ref: str | None, cert_file: Path | None, key_file: Path | None,
    ca_file: Path | None, verbose: bool,
) -> None:
    """Relay a stdio MCP host to a remote MCP server over mutual TLS.

    What an MCP host launches: it speaks MCP on stdin/stdout, and forwards every message to
    the streamable-HTTP server at URL (https only), presenting the client certificate and
    trusting only our CA. The certificate, the server's certificate and the connection are
    checked before any protocol traffic; each problem is one "Error: ..." line on stderr.
    No CA passphrase is needed. Needs the MCP Python SDK (mcp>=2.3,<3) in mcp-pki's own
    Python; without it, the error gives the pip command to run.

    \b
    Examples:
      mcp-pki bridge https://files.internal:8443/mcp --as alice
      mcp-pki bridge https://files.internal/mcp --cert alice/tls.crt --key alice/tls.key --ca alice/ca.crt
    Exit codes: 0 once the host closes stdin with every request answered; 1 on any error,
    before or after connecting: the server is gone or ended the session (so that the host
    can start the bridge again), or stdin closed with answers still missing.
    """
    from mcp_pki.bridge.start import CertificateSource, prepare_bridge

    source = CertificateSource(ref=ref, cert_file=cert_file, key_file=key_file, ca_file=ca_file)
    started = now()
    prepared = prepare_bridge(settings.home(), url, source, now=started)
    certificate = prepared.certificate
    # Prefixed: a host's log mixes the stderr of all its servers.
    click.echo(f"mcp-pki bridge: relaying to {shown(url)} as {shown(certificate.label)}", err=True)
    warnings = list(prepared.warnings)
    if certificate.not_after - started < EXPIRY_WARNING:
        warnings.append(f"the certificate {certificate.label} expires on "
                        f"{certificate.not_after:%Y-%m-%d %H:%M} UTC: renew it")
    for warning in warnings:
        click.echo(f"mcp-pki bridge: warning: {shown(warning)}", err=True)  # may quote a file
    prepared.run(verbose=verbose)
