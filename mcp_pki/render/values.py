"""What a snippet value may be, checked before any template sees it.

Escaping (render.filters) keeps a value inside its context; this module refuses the values
that no context should receive: control characters anywhere, URLs with userinfo, fragments or
loose hosts and ports, IPv6 zone ids, Kubernetes names Kubernetes would refuse. Each check is
strict on purpose: a config file that parses but means something else is the worst outcome.
"""

import ipaddress
import re
from pathlib import PurePosixPath, PureWindowsPath

from mcp_pki.controls import escape_controls, first_control
from mcp_pki.errors import InvalidInput

MAX_VALUE_LENGTH = 4096

# RFC 3986 characters for a path and query: unreserved, sub-delims, ":", "@", "/", "?", and
# "%" only as the start of a %XX escape. No fragment, no brackets outside the host.
_PATH_AND_QUERY = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")
_AUTHORITY = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[^:]*))?")
_K8S_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_K8S_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


def refuse_control_characters(text: str, what: str) -> str:
    """`text`, unless it holds a control character (a line break, ESC, a bidi override...)."""
    found = first_control(text)
    if found is not None:
        raise InvalidInput(
            f"{what} holds a control character ({escape_controls(found)}) in '{escape_controls(text)}': "
            "line breaks, escapes and the like would leave the value's place in the file"
        )
    return text


def check_port(text: str, what: str) -> str:
    """A TCP port 1-65535 in ASCII digits (``²`` and ``٨`` are digits to Python, not to nginx)."""
    if not (_PORT.fullmatch(text) and 1 <= int(text) <= 65535):
        raise InvalidInput(f"{what}={text!r}: must be a port number from 1 to 65535")
    return str(int(text))


def check_address(text: str, what: str) -> str:
    """An IPv4 or IPv6 address without a zone id, in its canonical form."""
    if "%" in text:
        raise InvalidInput(f"{what}={text!r}: an IPv6 zone id (%...) is not accepted; give the address alone")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidInput(f"{what}={text!r}: must be an IP address such as 127.0.0.1 or 0.0.0.0") from None


def check_url(text: str, what: str, *, scheme: str, path: bool) -> str:
    """An absolute URL of `scheme`, parsed strictly by hand: ``urlsplit`` forgives too much
    (it drops line breaks and tabs, takes ``user@`` and any zone id)."""
    problem = f"{what}={text!r}: must be " + (
        "an https:// URL (mutual TLS needs https)" if path else "http://HOST:PORT with no path (the plain-HTTP MCP server)"
    )
    prefix = scheme + "://"
    if not text.startswith(prefix):
        raise InvalidInput(problem)
    rest = text[len(prefix):]
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        raise InvalidInput(f"{what}={text!r}: a URL with user information (user@host) is not accepted")
    if "#" in tail:
        raise InvalidInput(f"{what}={text!r}: a URL with a #fragment is not accepted")
    host_and_port = _AUTHORITY.fullmatch(authority)
    if host_and_port is None or not _is_host(host_and_port["host"]):
        raise InvalidInput(f"{problem} (the host must be a DNS name, an IPv4 address or an [IPv6] address)")
    port = host_and_port["port"]
    if port is not None and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        raise InvalidInput(f"{problem} (the port must be a number from 1 to 65535)")
    if path:
        if not _PATH_AND_QUERY.fullmatch(tail):
            raise InvalidInput(f"{problem} (the path holds a character that must be %-escaped)")
    elif tail not in ("", "/"):
        raise InvalidInput(problem)
    return text


def _is_host(host: str) -> bool:
    if host.startswith("["):
        try:
            return isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address) and "%" not in host
        except ValueError:
            return False
    if host.replace(".", "").isdigit() and host.isascii():
        try:
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return False
    labels = host.split(".")
    return 0 < len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def check_absolute_path(text: str, what: str) -> str:
    """An absolute path on the machine that uses it: POSIX, or Windows with a drive or UNC."""
    if not (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()):
        raise InvalidInput(f"{what} must be an absolute path on the machine that uses it (got {text!r})")
    return text


def check_k8s_label(text: str, what: str) -> str:
    if not _K8S_LABEL.fullmatch(text):
        raise InvalidInput(f"{what}={text!r}: must be a Kubernetes name: 1-63 lower-case letters, digits and inner -")
    return text


def check_k8s_name(text: str, what: str) -> str:
    if not (_K8S_NAME.fullmatch(text) and all(_K8S_LABEL.fullmatch(part) for part in text.split("."))):
        raise InvalidInput(
            f"{what}={text!r}: must be a Kubernetes object name: lower-case letters, digits, inner - and ."
        )
    return text


def check_server_name(text: str, what: str) -> str:
    """The server's key in an MCP host's config, also a word on `claude mcp add`'s command
    line: it must not start with "-", where it would be read as an option."""
    if not (0 < len(text) <= 64 and text == text.strip() and not text.startswith("-")):
        raise InvalidInput(f"{what}={text!r}: use 1-64 characters, not starting with - or a blank")
    return text
