"""Pure X.509 logic: keys, names, profiles, CSRs, inspection.

Imports only `cryptography` and the standard library, does no file IO, and takes every
"now" as an argument, so it can be tested without a database or a command line.
"""
