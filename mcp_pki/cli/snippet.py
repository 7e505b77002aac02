"""``mcp-pki snippet``."""

from pathlib import Path

import click

from mcp_pki.cli.common import Settings, now, pass_settings, warn


@click.command()
@click.argument("target", required=False)
@click.argument("ref", required=False)
@click.option("--list", "list_targets", is_flag=True, help="List the targets, one per line, name first.")
@click.option("--all", "all_ref", metavar="REF", help="Render every target that fits REF's kind into --out DIR, with a README.")
@click.option("--dir", "folder", metavar="DIR", help="Where tls.crt, tls.key, ca.crt and crl.pem live on the machine that uses them [default: where issue wrote them].")
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE", help="A target parameter, e.g. port=8443 or url=https://... Repeatable.")
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
      mcp-pki snippet nginx files --var port=443 --var upstream=http://127.0.0.1:8000
      mcp-pki snippet python-client alice --var url=https://files.example.com:8443/mcp
      mcp-pki snippet --all alice --var url=https://files.example.com:8443/mcp --out ./alice-config
    A file in <home>/templates with a template's name overrides the packaged one.
    """
    from mcp_pki.errors import InvalidInput

    if list_targets:
        _print_targets()
        return
    if all_ref is not None:
        if target or ref:
            raise InvalidInput("--all takes a REF and no TARGET")
        if out is None:
            raise InvalidInput("--all needs --out DIR")
    elif not (target and ref):
        raise InvalidInput("give TARGET and REF (see --list), or --all REF --out DIR")
    parsed = _parse_variables(variables)

    from mcp_pki.services.files import OutputFiles, refuse_existing
    from mcp_pki.services.snippets import render_all, render_one

    home = settings.home()
    if all_ref is None:
        rendered = render_one(home, target or "", ref or "", folder=folder, variables=parsed, now=now())
        _portable_note(parsed)
        (one,) = rendered.snippets
        click.echo(f"# {one.target.name}: {one.target.usage}", err=True)
        for message in rendered.warnings:
            warn(message)
        if out is None:
            click.echo(one.text, nl=False)
            return
        contents = {Path(out): one.text}
    else:
        rendered = render_all(home, all_ref, folder=folder, variables=parsed, now=now())
        _portable_note(parsed)
        for message in rendered.warnings:
            warn(message)
        bundle = Path(out or ".")
        contents = {bundle / s.target.file_name: s.text for s in rendered.snippets}
        contents[bundle / "README.md"] = rendered.readme or ""
    refuse_existing(list(contents), force=force)
    files = OutputFiles()
    for path, text in contents.items():
        files.prepare(path.parent)
        # Scripts are handed over to be run: make them executable like the tools they are.
        files.add(path, text.encode("utf-8"), mode=0o755 if path.suffix in (".sh", ".py", ".mjs") else 0o644)
    for path in files.write(replace=force):
        click.echo(f"wrote {path}", err=True)


def _portable_note(variables: dict[str, str]) -> None:
    if variables.get("portable") == "true":
        click.echo("# portable: every teammate keeps tls.crt, tls.key and ca.crt in ~/.mcp-pki/SERVER/ "
                   "('request --out' and 'install --dir' there) and has mcp-pki on PATH", err=True)


def _print_targets() -> None:
    from mcp_pki.render import TARGETS

    width = max(len(t.name) for t in TARGETS)
    for t in TARGETS:
        needs = ", ".join(f"--var {v.name}" for v in t.variables if v.required)
        click.echo(f"{t.name:<{width}} {'/'.join(t.kinds):<14} {t.description}" + (f" [needs {needs}]" if needs else ""))


def _parse_variables(items: tuple[str, ...]) -> dict[str, str]:
    from mcp_pki.errors import InvalidInput

    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InvalidInput(f"invalid --var {item!r}: write KEY=VALUE")
        if key in parsed:
            raise InvalidInput(f"--var {key} given twice")
        parsed[key] = value
    return parsed
