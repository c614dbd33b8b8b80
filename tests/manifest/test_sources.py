"""Source entries to (scm, url, directory, ref), following builds.sr.ht's algorithm."""

from __future__ import annotations

import pytest

from buildworker.manifest import Source, parse_source


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        # plain URL: directory is the last path element
        (
            "https://git.sr.ht/~sircmpwn/hare",
            Source("git", "https://git.sr.ht/~sircmpwn/hare", "hare", None),
        ),
        # trailing .git trimmed, #ref split off
        (
            "https://github.com/swaywm/wlroots.git#0.16.0",
            Source("git", "https://github.com/swaywm/wlroots.git", "wlroots", "0.16.0"),
        ),
        # dir::url names the directory; .git is then NOT trimmed from the URL-derived default
        (
            "docs::https://example.org/site.git",
            Source("git", "https://example.org/site.git", "docs", None),
        ),
        (
            "::https://example.org/site.git",
            Source("git", "https://example.org/site.git", "site.git", None),
        ),
        (
            "out::https://example.org/site#main",
            Source("git", "https://example.org/site", "out", "main"),
        ),
        # scm+scheme
        (
            "git+ssh://git@git.sr.ht/~a/private",
            Source("git", "ssh://git@git.sr.ht/~a/private", "private", None),
        ),
        ("git+https://example.org/r.git", Source("git", "https://example.org/r.git", "r", None)),
        ("hg+https://hg.sr.ht/~a/repo", Source("hg", "https://hg.sr.ht/~a/repo", "repo", None)),
        (
            "hg+ssh://hg@hg.sr.ht/~a/repo#stable",
            Source("hg", "ssh://hg@hg.sr.ht/~a/repo", "repo", "stable"),
        ),
        ("HG+HTTPS://hg.example.org/r", Source("hg", "https://hg.example.org/r", "r", None)),
        # scp-like git address: not a URL, stays git
        (
            "git@github.com:owner/repo.git",
            Source("git", "git@github.com:owner/repo.git", "repo", None),
        ),
        (
            "git://git.example.org/proj.git",
            Source("git", "git://git.example.org/proj.git", "proj", None),
        ),
        # two '#': used verbatim, no ref (builds.sr.ht splits only when there are exactly 2 parts)
        ("https://example.org/a#b#c", Source("git", "https://example.org/a#b#c", "a#b#c", None)),
        # an empty ref is no ref
        ("https://example.org/a#", Source("git", "https://example.org/a", "a", None)),
        # trailing slash: Go's path.Base ignores it
        ("https://example.org/repo/", Source("git", "https://example.org/repo/", "repo", None)),
        # a three-part scheme is not scm+scheme
        ("a+b+c://example.org/r", Source("git", "a+b+c://example.org/r", "r", None)),
        ("svn+https://example.org/r", Source("svn", "https://example.org/r", "r", None)),
    ],
)
def test_parse_source(entry: str, expected: Source) -> None:
    assert parse_source(entry) == expected
