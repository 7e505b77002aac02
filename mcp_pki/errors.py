"""The one error tree of mcp-pki.

Every error a user can cause is a `PkiError`. The command line turns it into a single
``Error: ...`` line on stderr and its `exit_code`; anything else escaping is a bug and keeps
its traceback so that tests notice.
"""


class PkiError(Exception):
    """A problem the user can fix: bad input, missing setup, wrong passphrase."""

    exit_code = 1


class InvalidInput(PkiError):
    """A name, SAN, duration, key type, CSR or other value that we refuse."""


class PolicyViolation(PkiError):
    """A request that is well formed but outside what this CA may sign."""


class NotFound(PkiError):
    """A reference to a certificate or CA that the inventory does not hold."""


class Ambiguous(PkiError):
    """A reference that matches more than one certificate."""


class Conflict(PkiError):
    """The action would overwrite or duplicate something that already exists."""


class PassphraseError(PkiError):
    """The CA passphrase is missing or wrong."""


class WrongPassphrase(PassphraseError):
    """A passphrase was given and the CA key refused it: worth an audit record."""


class InventoryError(PkiError):
    """The database is missing, corrupt, not ours, or from a newer version."""
