"""SSH access to builds: users' public keys, the sshd entry point, the forced command.

- ``keys``: parse and validate an OpenSSH public key line (pure; cryptography).
- ``texts``: what users read (banner, refusals, usage), as builds.sr.ht words it (pure).
- ``commandline``: parse ``SSH_ORIGINAL_COMMAND`` (pure).
- ``protocol``: the framing spoken on the worker's control socket (pure).
- ``authorized``: the ``AuthorizedKeysCommand`` (asks the API who owns a key).
- ``shell``: the forced command (talks to the worker daemon's control socket).
- ``sshd``: the shipped sshd configuration, rendered from the INI config, and its install.

The daemon's side of the control socket is ``buildworker.worker.control``.
"""
