"""``mcp-pki list``, ``show`` and ``export``: reading the inventory."""

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from mcp_pki.cli.common import (
    P12_PASSPHRASE_ENV,
    Settings,
    emit_json,
    now,
    parse_duration_option,
    pass_settings,
    read_file,
    read_secret,
)
from mcp_pki.cli.terminal import shown, shown_fields


@click.command("list")
@click.option("--kind", type=click.Choice(["server", "client"]), help="Only this kind.")
@click.option("--status", type=click.Choice(["valid", "revoked", "expired"]), help="Only this status.")
@click.option("--expiring-within", metavar="DUR", help="Only valid certificates expiring within DUR, e.g. 30d.")
@click.option("--name", help="Only certificates of this NAME.")
@click.option("--current", is_flag=True, help="Leave out certificates that a valid renewal supersedes.")
@click.option("--wide", is_flag=True, help="Full serials (the table shows their first 12 hex digits).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_settings
def list_command(
    settings: Settings, kind: str | None, status: str | None, expiring_within: str | None,
    name: str | None, current: bool, wide: bool, as_json: bool,
) -> None:
    """List certificates in the inventory (all of them unless filtered).

    \b
    STATUS is valid, revoked, expired, or superseded: still valid, but renewed (--json keeps
    status "valid" and names the renewal in superseded_by).
    \b
    Examples:
      mcp-pki list --status valid --current     # what should be deployed now
      mcp-pki list --expiring-within 30d
    """
    from mcp_pki.services.home import open_existing
    from mcp_pki.services.listing import (
        ListFilter,
        Status,
        TableRow,
        iter_certificates_json,
        iter_table_rows,
    )

    if name is not None:
        from mcp_pki.pki.names import validate_name  # only then: it imports cryptography

        validate_name(name)  # an empty or impossible name is a typo, not "no certificates"
    wanted = ListFilter(
        kind=kind, status=Status(status) if status else None,
        expiring_within=parse_duration_option(expiring_within), name=name, current=current,
    )
    engine = open_existing(settings.home())
    try:
        # Streamed as read: 100,000 certificates never sit in memory at once.
        if as_json:
            _stream_json(iter_certificates_json(engine, wanted, now=now()))
            return
        width = 40 if wide else 12
        rows = iter_table_rows(engine, wanted, now=now(), serial_width=width)
        first = next(rows, None)
        if first is None:
            click.echo("no certificates", err=True)
            return
        lines = _Lines()
        colour = sys.stdout.isatty()  # never escape codes in a pipe or a file
        cells = {status: f"{status:10}" for status in _STATUS_COLOURS}
        lines.write(f"{'SERIAL':{width}}  {'KIND':6}  {'NAME':20}  {'STATUS':10}  {'NOT AFTER':16}  NAMES / ROLES")
        for row in itertools.chain((first,), rows):
            line = f"{row.head}{cells[row.status]}  {row.not_after}  {row.names}"
            # Names come from CSRs and from a database others can write: escaped unless the
            # line is printable ASCII throughout (one check in C for the usual line).
            if not (line.isascii() and line.isprintable()):
                row = TableRow(shown(row.head), row.status, shown(row.not_after), shown(row.names))
                line = f"{row.head}{cells[row.status]}  {row.not_after}  {row.names}"
            if colour:
                status = click.style(cells[row.status], fg=_STATUS_COLOURS[row.status])
                line = f"{row.head}{status}  {row.not_after}  {row.names}"
            lines.write(line)
        lines.flush()
    finally:
        engine.dispose()


class _Lines:
    """Output gathered a thousand lines at a time: one write per line costs a system call
    each on a terminal, which is line-buffered, and dominates a 100,000-row listing."""

    def __init__(self) -> None:
        self._pending: list[str] = []

    def write(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) >= 1000:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._pending.append("")  # each line ends with a newline
            sys.stdout.write("\n".join(self._pending))
            self._pending.clear()


_STATUS_COLOURS = {"valid": "green", "superseded": "cyan", "expired": "yellow", "revoked": "red"}


def _stream_json(documents: Iterator[str]) -> None:
    """A JSON array written one object per line as the rows arrive."""
    lines, previous = _Lines(), None
    for document in documents:
        # Every object but the last ends with a comma: written once the next one comes.
        lines.write("[" if previous is None else f"  {previous},")
        previous = document
    lines.write("[]" if previous is None else f"  {previous}\n]")
    lines.flush()


@click.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the details as JSON.")
@click.option("--pem", "as_pem", is_flag=True, help="Print the certificate as PEM.")
@pass_settings
def show(settings: Settings, ref: str, as_json: bool, as_pem: bool) -> None:
    """Show one certificate. REF is a NAME or a serial (a prefix of 8+ hex digits will do)."""
    from mcp_pki.services.home import open_existing
    from mcp_pki.services.inventory import show_certificate

    engine = open_existing(settings.home())
    try:
        details = show_certificate(engine, ref, now=now())
    finally:
        engine.dispose()
    if as_json:
        document = details.as_json()
        if as_pem:
            document["pem"] = details.pem
        emit_json(document)
        return
    if as_pem:
        click.echo(details.pem, nl=False)
        return
    details = shown_fields(details)  # names come from CSRs and from a database others can write
    status = details.status.value
    if details.revoked_at:
        status += f" on {details.revoked_at:%Y-%m-%d %H:%M} UTC ({details.revocation_reason})"
    lines = [
        ("serial", details.serial),
        ("name", f"{details.name} ({details.kind})" + (f", owner {details.owner}" if details.owner else "")),
        ("status", status),
        ("subject", details.subject),
        ("names", ", ".join(details.sans) or "-"),
        ("roles", ", ".join(details.roles) or "-"),
        ("usage", ", ".join(details.extended_key_usage)),
        ("key", details.key_type + (" (from a CSR)" if details.from_csr else "")),
        ("valid from", f"{details.not_before:%Y-%m-%d %H:%M} UTC"),
        ("valid until", f"{details.not_after:%Y-%m-%d %H:%M} UTC ({details.days_left} days left)"),
        ("sha256", details.sha256_fingerprint),
        ("issued by", "\n             ".join(f"{'  ' * i}<- {s}" for i, s in enumerate(details.chain))),
    ]
    if details.renews:
        lines.append(("renews", details.renews))
    if details.files_dir:
        lines.append(("files", details.files_dir))
    for label, value in lines:
        click.echo(f"{label:12} {value}")


@click.command()
@click.argument("ref")
@click.option("--format", "export_format", type=click.Choice(["pem", "der", "chain", "p12", "bundle"]), default="pem",
              show_default=True, help="chain = certificate then intermediates, as in tls.crt; bundle = a .tar.gz "
              "for 'mcp-pki install' on the teammate's machine.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False), help="Private key for --format p12.")
@click.option("--p12-legacy", is_flag=True, help="3DES/SHA-1 PKCS#12 for old macOS and Java.")
@click.option("--dir", "folder", metavar="DIR", help="With --format bundle: the folder on the teammate's machine, "
              "to render the host configurations for [default: install renders them].")
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE", help="With --format bundle: a snippet "
              "parameter for the host configurations, e.g. url=https://files.example.com:8443/mcp.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@pass_settings
def export(
    settings: Settings, ref: str, export_format: str, key_file: str | None, p12_legacy: bool, folder: str | None,
    variables: tuple[str, ...], out_file: str | None, force: bool,
) -> None:
    """Export a certificate as PEM, DER, chain, PKCS#12 (with the key you hold), or a bundle.

    \b
    A bundle holds what a teammate who made their own key ('mcp-pki request') needs:
      mcp-pki issue client alice --csr alice.csr --role dev
      mcp-pki export alice --format bundle --var url=https://files.example.com:8443/mcp --out alice.tar.gz
    """
    from mcp_pki.errors import InvalidInput

    if export_format == "bundle":
        from mcp_pki.cli.teammate import export_bundle

        export_bundle(settings, ref, out_file=out_file, folder=folder, variables=variables, force=force)
        return
    if folder is not None or variables:
        raise InvalidInput("--dir and --var are only used with --format bundle")
    from mcp_pki.services.files import PRIVATE, PUBLIC, write_atomically
    from mcp_pki.services.home import open_existing
    from mcp_pki.services.inventory import ExportFormat, export_certificate

    chosen = ExportFormat(export_format)
    binary = chosen in (ExportFormat.DER, ExportFormat.P12)
    if binary and out_file is None and sys.stdout.isatty():
        raise InvalidInput(f"--format {export_format} is binary: use --out FILE or redirect stdout")
    if key_file is not None and chosen is not ExportFormat.P12:
        raise InvalidInput("--key is only used with --format p12")
    key_pem, p12_passphrase = None, None
    if chosen is ExportFormat.P12:
        if key_file is None:
            raise InvalidInput("--format p12 needs the certificate's private key: pass --key FILE")
        key_pem = read_file(key_file, "key")
        p12_passphrase = read_secret(
            file=None, env=P12_PASSPHRASE_ENV, prompt="PKCS#12 passphrase", confirm=True, what="the PKCS#12 bundle",
            hint=f"set {P12_PASSPHRASE_ENV} or run on a terminal",
        )
    engine = open_existing(settings.home())
    try:
        data = export_certificate(
            engine, ref, chosen, now=now(), key_pem=key_pem, p12_passphrase=p12_passphrase, p12_legacy=p12_legacy,
        )
    finally:
        engine.dispose()
    if out_file is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    write_atomically(Path(out_file), data, mode=PRIVATE if chosen is ExportFormat.P12 else PUBLIC, force=force)
    click.echo(f"wrote {out_file}", err=True)
