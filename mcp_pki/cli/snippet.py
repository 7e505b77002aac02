"""``mcp-pki snippet``."""

from pathlib import Path

import click

from mcp_pki.cli.common import Settings, now, pass_settings


@click.command()
@click.argument("target", required=False)
@click.argument("ref", required=False)
@click.option("--list", "list_targets", is_flag=True, help="List the targets, one per line, name first.")
@click.option("--all", "all_ref", metavar="REF", help="Render every target that fits REF's kind into --out DIR.")
@click.option("--dir", "folder", metavar="DIR", help="Where the certificate files live on the target machine [default: /etc/mcp-pki/NAME].")
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE", help="A target parameter, e.g. port=8443. Repeatable.")
@click.option("--out", "out", type=click.Path(), help="Write to this file (with --all: this folder) instead of stdout.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@pass_settings
def snippet(
    settings: Settings, target: str | None, ref: str | None, list_targets: bool, all_ref: str | None,
    folder: str | None, variables: tuple[str, ...], out: str | None, force: bool,
) -> None:
    """Print ready-to-paste configuration for a certificate.

    \b
    Examples:
      mcp-pki snippet --list
      mcp-pki snippet nginx mcp-files --var port=443 --var upstream=http://127.0.0.1:8000
      mcp-pki snippet --all mcp-files --out ./config
    A file in <home>/templates with a template's name overrides the packaged one.
    """
    from mcp_pki.errors import InvalidInput
    from mcp_pki.render import TARGETS

    if list_targets:
        for t in TARGETS:
            click.echo(f"{t.name}\t{'/'.join(t.kinds)}\t{t.description}")
        return
    if all_ref is not None:
        if target or ref:
            raise InvalidInput("--all takes a REF and no TARGET")
        if out is None:
            raise InvalidInput("--all needs --out DIR")
    elif not (target and ref):
        raise InvalidInput("give TARGET and REF (see --list), or --all REF --out DIR")
    parsed = {}
    for item in variables:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InvalidInput(f"invalid --var {item!r}: write KEY=VALUE")
        parsed[key] = value

    from mcp_pki.services.files import OutputFiles, refuse_existing
    from mcp_pki.services.snippets import render_snippets, snippet_file_name

    snippets = render_snippets(
        settings.home(), all_ref or ref or "", None if all_ref else [target or ""],
        folder=folder, variables=parsed, now=now(),
    )
    if out is None:
        click.echo(snippets[0].text, nl=False)
        return
    paths = [Path(out) / snippet_file_name(s.target) for s in snippets] if all_ref else [Path(out)]
    refuse_existing(paths, force=force)
    files = OutputFiles()
    for path, s in zip(paths, snippets, strict=True):
        files.prepare(path.parent)
        files.add(path, s.text.encode("utf-8"))
    for path in files.write():
        click.echo(f"wrote {path}", err=True)
