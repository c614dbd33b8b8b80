"""FakeGitForge: a stand-in for a public forge (no real one is reachable from here).

``git daemon`` on 127.0.0.1:PORT serving bare repositories under a directory, read-only, as
``git://127.0.0.1:PORT/NAME.git``; repositories are made with `create` (a few commits) or
`generate` (many commits of incompressible files, for a clone of realistic size). Used by
tests/guest/test_git_cache*.py and bench/cache.py.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from pathlib import Path

from buildworker.guest.ports import pick_port

__all__ = ["FakeGitForge"]

_ENV = {
    "GIT_AUTHOR_NAME": "Forge",
    "GIT_AUTHOR_EMAIL": "forge@example.org",
    "GIT_COMMITTER_NAME": "Forge",
    "GIT_COMMITTER_EMAIL": "forge@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def _git(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        check=True,
        env={**os.environ, **_ENV},
    )
    return result.stdout.decode().strip()


class FakeGitForge:
    """Bare repositories under ``root`` served by git daemon on 127.0.0.1:``port``."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or pick_port()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeGitForge:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [
            "git", "daemon", "--listen=127.0.0.1", f"--port={self.port}", "--reuseaddr",
            "--export-all", f"--base-path={self.root}", str(self.root),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.close()
                    raise RuntimeError(f"git daemon did not listen on {self.port}") from None
                time.sleep(0.05)

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        return f"git://{host}:{self.port}/{name}.git"

    def path(self, name: str) -> Path:
        return self.root / f"{name}.git"

    def create(self, name: str, commits: int = 2) -> str:
        """A repository of `commits` small commits on main; returns the head commit."""
        _git("init", "-q", "--bare", "-b", "main", str(self.path(name)))
        for n in range(commits):
            self.commit(name, {f"file{n}.txt": f"line {n}\n"}, f"commit {n}")
        return self.head(name)

    def commit(self, name: str, files: dict[str, str], message: str, branch: str = "main") -> str:
        """One commit adding `files` on top of `branch` (fast-import); returns it."""
        found = subprocess.run(
            ["git", "rev-parse", "-q", "--verify", f"refs/heads/{branch}"],
            cwd=self.path(name),
            capture_output=True,
            text=True,
            check=False,
        )
        head = found.stdout.strip() if found.returncode == 0 else ""
        stream = [f"commit refs/heads/{branch}", "mark :1"]
        stream += ["committer Forge <forge@example.org> 1700000000 +0000"]
        data = message.encode()
        stream += [f"data {len(data)}", message]
        if head:
            stream.append(f"from {head}")
        body = "\n".join(stream).encode() + b"\n"
        for path, text in files.items():
            blob = text.encode()
            body += f"M 100644 inline {path}\ndata {len(blob)}\n".encode() + blob + b"\n"
        _git("fast-import", "--quiet", cwd=self.path(name), stdin=body + b"done\n")
        return self.head(name, branch)

    def head(self, name: str, branch: str = "main") -> str:
        return _git("rev-parse", f"refs/heads/{branch}", cwd=self.path(name))

    def generate(self, name: str, commits: int, files: int, file_bytes: int, seed: int = 1) -> str:
        """A repository of `commits` commits, each rewriting `files` files of `file_bytes`
        random (incompressible) hex bytes: about commits * files * file_bytes / 2 packed."""
        rng = random.Random(seed)
        _git("init", "-q", "--bare", "-b", "main", str(self.path(name)))
        parts: list[bytes] = []
        for n in range(commits):
            message = f"commit {n}".encode()
            parts.append(f"commit refs/heads/main\nmark :{n + 1}\n".encode())
            parts.append(f"committer Forge <forge@example.org> {1700000000 + n} +0000\n".encode())
            parts.append(f"data {len(message)}\n".encode() + message + b"\n")
            if n:
                parts.append(f"from :{n}\n".encode())
            for f in rng.sample(range(files * 4), files):
                blob = rng.randbytes(file_bytes // 2).hex().encode()
                parts.append(f"M 100644 inline src/f{f}.txt\ndata {len(blob)}\n".encode())
                parts.append(blob + b"\n")
        parts.append(b"done\n")
        _git("fast-import", "--quiet", cwd=self.path(name), stdin=b"".join(parts))
        _git("repack", "-adq", cwd=self.path(name))
        return self.head(name)
