"""The streaming redactor: no secret survives any chunking; other text passes unchanged."""

from __future__ import annotations

import base64
import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from buildworker.worker.redact import MASK, NeedleSet, Redactor, needles_for

# Secrets use lowercase letters and digits; filler text uses characters outside that set
# and outside the mask's own characters, so "no secret in output" is unambiguous.
SECRET_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
FILLER_ALPHABET = "XYZQW .,:-\n\r\t!"

secrets_st = st.lists(
    st.text(SECRET_ALPHABET, min_size=4, max_size=24), min_size=1, max_size=4, unique=True
)


def _run(redactor: Redactor, data: bytes, cuts: list[int], releases: set[int]) -> bytes:
    out = bytearray()
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        out += redactor.write(data[a:b])
        if i in releases:
            out += redactor.release()
    out += redactor.flush()
    return bytes(out)


def _collapse(data: bytes) -> bytes:
    return re.sub(rb"(\[MASKED\])+", MASK, data)


@settings(max_examples=300, deadline=None)
@given(
    secrets=secrets_st,
    pieces=st.lists(
        st.tuples(st.booleans(), st.integers(0, 3), st.text(FILLER_ALPHABET)), max_size=12
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    releases=st.sets(st.integers(0, 20), max_size=5),
)
def test_no_secret_survives_any_chunking_or_timed_release(
    secrets: list[str], pieces: list[tuple[bool, int, str]], cuts: list[int], releases: set[int]
) -> None:
    # Given a stream of filler text and secrets, cut into random chunks, with timer releases
    data = "".join(
        (secrets[i % len(secrets)] if is_secret else "") + filler for is_secret, i, filler in pieces
    ).encode()
    # When it passes through a redactor
    out = _run(Redactor(secrets), data, cuts, releases)
    # Then no secret appears in the concatenated output
    for secret in secrets:
        assert secret.encode() not in out
    # And without timer releases, the output is exactly the input with secrets masked
    if not releases:
        expected = data
        for secret in sorted(secrets, key=len, reverse=True):
            expected = expected.replace(secret.encode(), b"\0")
        # Secrets may overlap each other; anything left in the secret alphabet between
        # masks belongs to a secret run, so compare the filler skeleton instead.
        skeleton = re.sub(rb"[a-z0-9\0]+", MASK, expected)
        assert _collapse(out) == _collapse(skeleton)


@settings(max_examples=200, deadline=None)
@given(
    text=st.binary(max_size=300).filter(lambda b: b"[" not in b),
    cuts=st.lists(st.integers(0, 400), max_size=20),
)
def test_text_without_secrets_passes_through_unchanged(text: bytes, cuts: list[int]) -> None:
    # Given secrets whose characters never occur in the text (all start with "[")
    redactor = Redactor(["[secret-value-1", "[another one"])
    # Then any chunking reproduces the text byte for byte
    assert _run(redactor, text, cuts, set()) == text


def test_each_line_of_a_multiline_secret_is_masked_also_with_crlf() -> None:
    key = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQABAAABAQ\nZZZZqqqq1111\n-----END KEY-----\n"
    redactor = Redactor([key])
    pty_output = key.replace("\n", "\r\n").encode()
    out = redactor.write(pty_output[:17]) + redactor.write(pty_output[17:]) + redactor.flush()
    assert b"AAAAB3NzaC1yc2EAAAADAQABAAABAQ" not in out
    assert b"ZZZZqqqq1111" not in out
    assert out.count(MASK) == 4


def test_base64_and_shell_quoted_forms_are_masked() -> None:
    secret = "it's a s3cret value"
    redactor = Redactor([secret])
    for prefix in (b"", b"x", b"xy"):
        encoded = base64.b64encode(prefix + secret.encode())
        out = redactor.write(b"echo " + encoded + b"\n") + redactor.flush()
        assert encoded[4:-4] not in out, prefix
    xtrace = b"+ echo 'it'\\''s a s3cret value'\r\n"
    out = redactor.write(xtrace) + redactor.flush()
    assert b"s3cret" not in out


def test_a_secret_printed_one_character_per_flush_interval_never_appears() -> None:
    # Given a secret written one byte at a time with a timer release after every byte
    redactor = Redactor(["hunter22"])
    out = bytearray()
    for ch in b"pw=hunter22 XY\n":
        out += redactor.write(bytes([ch]))
        out += redactor.release()
    out += redactor.flush()
    # Then not even its first half shows, and the text after it does
    assert b"hunt" not in out
    assert out.startswith(b"pw=") and out.endswith(b" XY\n")


def test_hold_back_is_bounded_by_longest_needle() -> None:
    redactor = Redactor(["abcdefgh"])
    out = redactor.write(b"xxxxabcdefg")
    assert out == b"xxxx"
    assert redactor.held == 7
    assert redactor.write(b"Z") == b"abcdefgZ"


def test_needles_added_mid_stream_apply_to_later_output() -> None:
    needles = NeedleSet()
    redactor = Redactor(needles)
    assert redactor.write(b"token-1234 ") == b"token-1234 "
    needles.add("token-1234", "api token")
    assert redactor.write(b"token-1234\n") + redactor.flush() == MASK + b"\n"


def test_too_short_values_are_reported_by_name() -> None:
    needles = NeedleSet()
    needles.add("ab", "tiny")
    needles.add("long enough", "fine")
    assert needles.too_short == ["tiny"]
    assert needles_for("ab") == ([], True)


def test_our_own_log_events_are_masked_while_the_job_runs() -> None:
    from buildworker.worker.redact import structlog_masker

    needles = NeedleSet()
    mask = structlog_masker(needles)
    added = needles.add("p4ssw0rd-value", "token")
    event = mask(None, "info", {"event": "x", "error": "exit 1: p4ssw0rd-value", "n": 3})
    assert event == {"event": "x", "error": "exit 1: [MASKED]", "n": 3}
    needles.discard(added)
    assert mask(None, "info", {"error": "p4ssw0rd-value"}) == {"error": "p4ssw0rd-value"}


def test_the_minimum_masked_length_is_the_configured_one() -> None:
    from buildworker.config import parse_config

    config = parse_config("[worker]\nmask-min-length = 8\n")
    assert config.worker.mask_min_length == 8
    strict = NeedleSet(min_len=config.worker.mask_min_length)
    strict.add("abcdefg", "seven")  # 7 bytes: under the floor, named, not masked
    strict.add("abcdefgh", "eight")
    assert strict.too_short == ["seven"]
    assert b"abcdefgh" in strict.needles and b"abcdefg" not in strict.needles
    # the default keeps 4-byte values masked
    default = NeedleSet()
    default.add("abcd", "four")
    assert b"abcd" in default.needles and default.too_short == []
    # a floor of 0 cannot make an empty needle that would mask everything
    loose = NeedleSet(min_len=0)
    loose.add("x", "one")
    assert b"" not in loose.needles and b"x" in loose.needles
