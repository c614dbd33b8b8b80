"""~/.buildenv through a real bash: every value comes back byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildworker.manifest import RESERVED_SHELL_NAMES, EnvValue, parse_manifest
from buildworker.render import render_buildenv

BASH = shutil.which("bash") or "/bin/bash"
# C.UTF-8 ships with Debian 12; quoting must not depend on the locale, so try both.
LOCALES = ("C", "C.UTF-8")

# Any Unicode text bash can hold: no NUL (C strings), no lone surrogates (not encodable).
values = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"))
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True).filter(
    lambda name: name not in RESERVED_SHELL_NAMES
)
scalars = st.one_of(
    values,
    st.integers(min_value=-(10**30), max_value=10**30),
    st.booleans(),
    st.none(),
)


def _bash(directory: Path, script: str, locale: str) -> bytes:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "LC_ALL": locale,
    }
    result = subprocess.run(
        [BASH, "-c", script], cwd=directory, env=env, capture_output=True, check=True, timeout=30
    )
    return result.stdout


def _print_all(env: dict[str, EnvValue]) -> str:
    # printf "%s\0" "$A" "$B"...: no loop variable that could shadow a generated name;
    # values cannot contain NUL, so NUL separates them unambiguously.
    refs = " ".join(f'"${name}"' for name in env)
    return f'. ./buildenv; printf "%s\\0" {refs}'


def _expected_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_single_value_round_trips_through_the_documented_command(tmp_path: Path) -> None:
    value = 'it\'s a "test" with $HOME, `id`, \\n, \n newline, tab\t and ünïcödé ✓'
    (tmp_path / "buildenv").write_text(render_buildenv({"KEY": value}), encoding="utf-8")
    out = _bash(tmp_path, '. ./buildenv; printf %s "$KEY"', "C.UTF-8")
    assert out == value.encode("utf-8")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(env=st.dictionaries(names, values, min_size=1, max_size=6), locale=st.sampled_from(LOCALES))
def test_every_string_value_comes_back_byte_identical(
    tmp_path: Path, env: dict[str, EnvValue], locale: str
) -> None:
    (tmp_path / "buildenv").write_text(render_buildenv(env), encoding="utf-8")
    out = _bash(tmp_path, _print_all(env), locale)
    assert out.split(b"\0")[:-1] == [str(v).encode("utf-8") for v in env.values()]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=st.lists(scalars, max_size=6), locale=st.sampled_from(LOCALES))
def test_lists_come_back_element_wise_as_bash_arrays(
    tmp_path: Path, items: list[str | int | bool | None], locale: str
) -> None:
    env: dict[str, EnvValue] = {"KEY": list(items)}
    (tmp_path / "buildenv").write_text(render_buildenv(env), encoding="utf-8")
    out = _bash(
        tmp_path, '. ./buildenv; for v in "${KEY[@]}"; do printf "%s\\0" "$v"; done', locale
    )
    assert out.split(b"\0")[:-1] == [_expected_text(v).encode("utf-8") for v in items]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(env=st.dictionaries(names, scalars, min_size=1, max_size=5))
def test_manifest_yaml_to_bash_end_to_end(tmp_path: Path, env: dict[str, EnvValue]) -> None:
    # The whole path a value takes: YAML text -> parser -> renderer -> bash.
    text = yaml.safe_dump(
        {"image": "debian/bookworm", "tasks": [{"a": "true"}], "environment": env},
        # Escaped, not raw: PyYAML's emitter writes a raw NEL (U+0085) that YAML then reads
        # as a line break, a round-trip bug of the dumper, not of the manifest path.
        allow_unicode=False,
    )
    manifest = parse_manifest(text, max_size=1 << 20)
    assert manifest.environment == env
    (tmp_path / "buildenv").write_text(render_buildenv(manifest.environment), encoding="utf-8")
    out = _bash(tmp_path, _print_all(env), "C.UTF-8")
    assert out.split(b"\0")[:-1] == [_expected_text(v).encode("utf-8") for v in env.values()]


def test_complete_build_function_is_defined_and_ends_the_script(tmp_path: Path) -> None:
    (tmp_path / "buildenv").write_text(render_buildenv({}), encoding="utf-8")
    out = _bash(tmp_path, ". ./buildenv; echo before; complete-build; echo after", "C")
    assert out == b"before\n"
    assert (tmp_path / ".complete-build").read_text() == "1\n"


def test_integers_are_not_rendered_in_exponent_form(tmp_path: Path) -> None:
    m = parse_manifest("image: a\ntasks: [{a: b}]\nenvironment: {N: 1000000, M: 1234567}\n")
    (tmp_path / "buildenv").write_text(render_buildenv(m.environment), encoding="utf-8")
    assert _bash(tmp_path, '. ./buildenv; printf "%s %s" "$N" "$M"', "C") == b"1000000 1234567"
