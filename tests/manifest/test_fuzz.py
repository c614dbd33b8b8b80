"""The parser raises nothing but ManifestError, whatever it is given."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import buildworker.manifest as manifest_module
from buildworker.manifest import KNOWN_KEYS, Manifest, ManifestError, parse_manifest


def _parse_or_error(text: str) -> Manifest | ManifestError:
    try:
        return parse_manifest(text)
    except ManifestError as exc:
        # Every error names a field and a reason: no empty or placeholder messages.
        assert exc.errors
        assert all(e.field and e.reason for e in exc.errors)
        return exc


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["always", "success", "failure", "email", "webhook", "x@y.z", "debian/sid"]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10), st.integers(), st.booleans())
data = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)
# Close to real manifests, so validation gets past the first checks (and sometimes passes).
task_names = st.one_of(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True), st.text(max_size=8))
env_names = st.one_of(st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True), st.text(max_size=8))
string_lists = st.lists(st.text(min_size=1, max_size=20), max_size=3)
manifests = st.fixed_dictionaries(
    {
        "image": st.sampled_from(["debian/bookworm", "alpine/edge", "", "UP", "a/../b"]),
        "tasks": st.lists(st.dictionaries(task_names, scalars | data, max_size=2), max_size=3),
    },
    optional={
        "arch": st.sampled_from(["amd64", "x86_64", "bad arch"]) | data,
        "packages": string_lists | data,
        "repositories": st.dictionaries(st.text(max_size=8), st.text(max_size=20)) | data,
        "sources": string_lists | data,
        "triggers": st.lists(
            st.dictionaries(
                st.sampled_from(["action", "condition", "to", "cc", "url", "in_reply_to", "x"]),
                scalars,
            ),
            max_size=3,
        ),
        "environment": st.dictionaries(env_names, scalars | data, max_size=4),
        "secrets": string_lists | data,
        "shell": st.booleans() | data,
        "artifacts": string_lists | data,
        "oauth": st.sampled_from(["builds.sr.ht/JOBS:RO", "x"]) | data,
        "unknown": data,
    },
)


@settings(max_examples=500, deadline=None)
@given(text=st.text())
def test_arbitrary_text_raises_only_manifest_error(text: str) -> None:
    _parse_or_error(text)


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(
            [
                "image: a\n",
                "tasks:\n",
                "- ",
                "  ",
                "a: ",
                "&x ",
                "*x",
                "[",
                "]",
                "{",
                "}",
                ",",
                ":",
                "? ",
                "!!binary ",
                "!!set ",
                "!!omap ",
                "!!python/tuple ",
                "'",
                '"',
                "\\",
                "\\x00",
                "\\ud800",
                "2001-13-45",
                "0x1F",
                "1e999",
                ".nan",
                "---\n",
                "...\n",
                "\n",
                "\t",
                "#",
                "|",
                ">",
                "<<: ",
                "~",
                "%YAML 1.1\n",
                "%TAG ! x\n",
            ]
        ),
        max_size=40,
    ).map("".join)
)
def test_yaml_shaped_noise_raises_only_manifest_error(text: str) -> None:
    _parse_or_error(text)


@settings(max_examples=500, deadline=None)
@given(value=data)
def test_arbitrary_yaml_documents_raise_only_manifest_error(value: Any) -> None:
    _parse_or_error(yaml.safe_dump(value))


@settings(max_examples=500, deadline=None)
@given(value=manifests, flow=st.booleans())
def test_near_manifests_raise_only_manifest_error(value: dict[str, Any], flow: bool) -> None:
    result = _parse_or_error(yaml.safe_dump(value, default_flow_style=flow, sort_keys=False))
    event("valid" if isinstance(result, Manifest) else "invalid")
    if isinstance(result, Manifest):
        # Whatever is accepted is what the contract promises.
        assert isinstance(result.image, str) and result.image
        assert result.tasks or result.shell
        assert all(isinstance(k, str) for k in result.environment)


def test_the_fuzzers_reach_valid_manifests() -> None:
    # Guard against a generator that only ever produces garbage.
    text = yaml.safe_dump({"image": "debian/bookworm", "tasks": [{"a": "b"}]})
    assert isinstance(_parse_or_error(text), Manifest)


class _PureLoader(yaml.SafeLoader):
    """The loader PyYAML falls back to without libyaml: same contract, other error paths."""


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_PureLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


@pytest.fixture
def pure_python_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "_Loader", _PureLoader)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text() | data.map(yaml.safe_dump))
def test_without_libyaml_too(pure_python_loader: None, text: str) -> None:
    _parse_or_error(text)


def test_without_libyaml_deep_nesting_is_a_manifest_error(pure_python_loader: None) -> None:
    # The pure-Python composer recurses: this is a RecursionError inside PyYAML.
    result = _parse_or_error("image: a\ntasks: [{a: b}]\nx: " + "[" * 2000 + "]" * 2000)
    assert isinstance(result, ManifestError)
    assert [str(e) for e in result.errors] == ["yaml: nested too deeply"]
