"""Where an inventory lives: the home folder, its database URL and its settings."""

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_pki.durations import parse_lifetime
from mcp_pki.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy import Engine

CRL_VALIDITY = timedelta(days=7)
# Leaves beyond 397 days are refused by most clients' policies, and a long-lived client
# certificate outlives the teammate's access; config.yaml may lower or raise this.
LEAF_MAX_VALIDITY = timedelta(days=397)


@dataclass(frozen=True, slots=True)
class Policy:
    """Issuance settings from ``config.yaml``; the defaults need no file."""

    max_validity: timedelta = LEAF_MAX_VALIDITY
    # How long a CRL stays current: servers reject everyone once it passes, so publish
    # (`mcp-pki crl`, e.g. daily from cron) well before.
    crl_validity: timedelta = CRL_VALIDITY


@dataclass(frozen=True, slots=True)
class Home:
    path: Path
    db_url: str

    @property
    def root_certificate_file(self) -> Path:
        return self.path / "ca.crt"

    @property
    def crl_file(self) -> Path:
        return self.path / "crl.pem"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def templates_dir(self) -> Path:
        return self.path / "templates"

    def policy(self) -> Policy:
        if not self.config_file.exists():
            return Policy()
        return _parse_policy(_load_yaml(self.config_file))


def open_existing(home: Home) -> "Engine":
    """The home's inventory, which must exist (see `mcp_pki.store.db.open_inventory`)."""
    from mcp_pki.store.db import open_inventory  # SQLAlchemy only for commands that need it

    return open_inventory(home.db_url)


def resolve_home(home: str | None, db_url: str | None) -> Home:
    """``--home``, else ``$MCP_PKI_HOME``, else the platform's user data folder."""
    folder = home or os.environ.get("MCP_PKI_HOME")
    if folder:
        path = Path(folder).expanduser().absolute()
    else:
        from platformdirs import user_data_path

        path = user_data_path("mcp-pki", appauthor=False)
    url = db_url or os.environ.get("MCP_PKI_DB") or f"sqlite:///{path / 'inventory.db'}"
    return Home(path=path, db_url=url)


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} must hold a mapping of settings")
    return data


def _parse_policy(data: dict[str, Any]) -> Policy:
    """``policy: {max_validity: 397d}`` and ``crl: {next_update: 7d}``."""
    policy, crl = _section(data, "policy", {"max_validity"}), _section(data, "crl", {"next_update"})
    defaults = Policy()
    return Policy(
        max_validity=_duration(policy, "max_validity", defaults.max_validity),
        crl_validity=_duration(crl, "next_update", defaults.crl_validity),
    )


def _section(data: dict[str, Any], name: str, known: set[str]) -> dict[str, Any]:
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise InvalidInput(f"config.yaml: '{name}' must be a mapping")
    unknown = set(section) - known
    if unknown:
        raise InvalidInput(f"config.yaml: unknown {name} setting(s): {', '.join(sorted(unknown))}")
    return section


def _duration(section: dict[str, Any], key: str, default: timedelta) -> timedelta:
    return parse_lifetime(str(section[key]), what=f"config.yaml: {key}") if key in section else default
