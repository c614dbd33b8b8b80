"""The kinds of secret a user can store and a build receives (builds.sr.ht's three).

The API checks a new secret's type against these, and the worker (and ``buildworker run``)
against what a claim hands it, so both sides read this one tuple: a kind added on one side
only would be stored but refused at the build, or the other way round.

- ``ssh_key``: a private key, installed in the build user's ``~/.ssh``;
- ``pgp_key``: a private key imported into the build user's GnuPG keyring;
- ``plaintext_file``: a file written to its ``path`` with its ``mode``.
"""

from __future__ import annotations

__all__ = ["SECRET_TYPES"]

#: In the order error messages and the API schema's ``enum`` list them.
SECRET_TYPES = ("ssh_key", "pgp_key", "plaintext_file")
