"""``mcp-pki request`` and ``install`` (the teammate's machine), and ``export --format bundle``."""

from pathlib import Path

import click

from mcp_pki.cli.common import Settings, now, read_file, warn
from mcp_pki.cli.terminal import shown


@click.command()
@click.argument("name")
@click.option("--email", help="Your email, to ask for in the certificate (the admin repeats it).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for tls.key and NAME.csr [default: ./NAME].")
@click.option("--key-type", default="p256", show_default=True, help="p256, p384, ed25519, rsa2048, rsa3072 or rsa4096.")
@click.option("--force", is_flag=True, help="Replace an existing tls.key and NAME.csr.")
def request(name: str, email: str | None, out_dir: str | None, key_type: str, force: bool) -> None:
    """Make your key and a certificate request, on your own machine (no CA needed).

    \b
    Writes tls.key (mode 0600: it never leaves this machine) and NAME.csr, and prints what to
    send to the CA admin. When the admin sends back a bundle:
      mcp-pki install NAME.tar.gz --dir FOLDER
    \b
    Example:
      mcp-pki request alice --email alice@example.com --out ~/mcp-pki/alice
    """
    from mcp_pki.pki.keys import parse_key_type
    from mcp_pki.services.teammate import request_certificate

    folder = Path(out_dir) if out_dir else Path(name)
    made = request_certificate(name, folder, email=email, key_type=parse_key_type(key_type), force=force)
    click.echo(f"wrote {made.key_file} (private key, 0600: keep it here)", err=True)
    click.echo(f"wrote {made.csr_file}", err=True)
    click.echo(f"key sha256 {made.key_sha256}", err=True)
    email_option = f" --email {email}" if email else ""
    click.echo(
        f"Send {made.csr_file.name} to your CA admin, who runs: mcp-pki issue client {name} --csr {made.csr_file.name}"
        f"{email_option} --role ROLE && mcp-pki export {name} --format bundle --var url=URL --out {name}.tar.gz"
    )


@click.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--dir", "folder", type=click.Path(file_okay=False),
              help="The folder holding your tls.key [default: ./NAME, as 'request NAME' wrote it].")
@click.option("--force", is_flag=True, help="Replace tls.crt, ca.crt and crl.pem already there (a renewal).")
def install(bundle: str, folder: str | None, force: bool) -> None:
    """Install a bundle from the CA admin next to your key, and configure your MCP hosts.

    \b
    Checks that the certificate matches tls.key, chains to the bundle's ca.crt and is not in
    its crl.pem; then writes tls.crt, ca.crt and crl.pem beside the key, the configuration of
    every MCP host for that folder into config/, and prints the next step for each host.
    \b
    Example:
      mcp-pki install alice.tar.gz --dir ~/mcp-pki/alice
    """
    from mcp_pki.services.teammate import install_bundle, peek_name

    data = read_file(bundle, "bundle")
    target = Path(folder) if folder else Path(peek_name(data))
    done = install_bundle(data, target, force=force, now=now())
    for message in done.warnings:
        warn(message)
    # The bundle is a file someone sent: its names are shown, never obeyed, by the terminal.
    click.echo(f"installed {shown(done.name)} ({shown(done.serial)}), valid until {done.not_after}, in {shown(done.folder)}",
               err=True)
    for skipped in done.skipped:
        click.echo(f"skipped {skipped.target.name}: {skipped.reason}", err=True)
    click.echo("Next, for the MCP host you use:")
    for snippet in done.configs:
        path = done.folder / "config" / snippet.target.file_name
        click.echo(f"  {snippet.target.name:<16} {path}: {snippet.target.usage}")


def export_bundle(settings: Settings, ref: str, *, out_file: str | None, folder: str | None,
                  variables: tuple[str, ...], force: bool) -> None:
    """``export REF --format bundle``: the archive a teammate installs next to their key."""
    from mcp_pki.cli.snippet import _parse_variables
    from mcp_pki.errors import InvalidInput
    from mcp_pki.services.files import PUBLIC, write_atomically
    from mcp_pki.services.teammate import export_bundle as build

    if out_file is None:
        raise InvalidInput("--format bundle needs --out FILE (e.g. alice.tar.gz)")
    made = build(settings.home(), ref, folder=folder, variables=_parse_variables(variables), now=now())
    for skipped in made.skipped:
        click.echo(f"skipped {skipped.target.name}: {skipped.reason}", err=True)
    write_atomically(Path(out_file), made.data, mode=PUBLIC, force=force)
    click.echo(f"wrote {out_file}: the certificate of {made.name} ({made.serial}), ca.crt, crl.pem"
               + (f" and {len(made.configs)} host configurations" if made.configs else ""), err=True)
    click.echo(f"The teammate runs: mcp-pki install {Path(out_file).name} --dir FOLDER-WITH-THEIR-tls.key", err=True)
