"""Where an inventory lives: the home folder, its database URL and its settings."""

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from mcp_pki.durations import parse_duration
from mcp_pki.errors import InvalidInput
from mcp_pki.pki.profiles import LEAF_MAX_VALIDITY


@dataclass(frozen=True, slots=True)
class Policy:
    """Issuance settings from ``config.yaml``; the defaults need no file."""

    max_validity: timedelta = LEAF_MAX_VALIDITY


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
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} must hold a mapping of settings")
    return data


def _parse_policy(data: dict[str, Any]) -> Policy:
    policy = data.get("policy") or {}
    if not isinstance(policy, dict):
        raise InvalidInput("config.yaml: 'policy' must be a mapping")
    unknown = set(policy) - {"max_validity"}
    if unknown:
        raise InvalidInput(f"config.yaml: unknown policy setting(s): {', '.join(sorted(unknown))}")
    if "max_validity" in policy:
        return Policy(max_validity=parse_duration(str(policy["max_validity"])))
    return Policy()
