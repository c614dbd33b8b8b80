"""Config: typed values, errors that name section and key, and an example that tells the truth."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from buildworker.config import (
    Config,
    ConfigError,
    describe,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "worker.conf.example"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45m", 2700.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("90", 90.0),
        ("1.5s", 1.5),
        ("2d", 172800.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("16KiB", 16384), ("2GiB", 2 * 1024**3), ("512", 512), ("1MB", 10**6)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ("[worker]\ntimeout = 45x\n", "worker.timeout: expected a duration such as 45m, got '45x'"),
        ("[worker]\nslots = two\n", "worker.slots: expected a whole number, got 'two'"),
        ("[vm]\nmemory = lots\n", "vm.memory: expected a size such as 16KiB or 2GiB, got 'lots'"),
        (
            "[api]\nbind = localhost\n",
            "api.bind: expected HOST:PORT such as 127.0.0.1:8080, got 'localhost'",
        ),
        (
            "[worker]\napi-url = 127.0.0.1:8080\n",
            "worker.api-url: expected a URL such as http://127.0.0.1:8080, got '127.0.0.1:8080'",
        ),
        (
            "[api]\nimage-aliases = debian/stable\n",
            "api.image-aliases: 'debian/stable': expected alias=release",
        ),
        ("[worker]\ntimeuot = 45m\n", "worker.timeuot: unknown key"),
        ("[wroker]\ntimeout = 45m\n", "wroker: unknown section"),
    ],
)
def test_bad_values_name_section_key_and_expectation(ini: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(ini)
    assert str(info.value).startswith(message)


def test_values_are_typed() -> None:
    config = parse_config(
        "[worker]\ntimeout = 1h\nslots = 3\nimages = /srv/images\n"
        "[vm]\nmemory = 4GiB\nforwards = 10.0.2.100:9418=127.0.0.1:19418, 10.0.2.101:80=127.0.0.1:8081\n"
    )
    assert config.worker.timeout == 3600.0
    assert config.worker.slots == 3
    assert config.worker.images == Path("/srv/images")
    assert config.vm.memory == 4 * 1024**3
    assert config.vm.forwards == ("10.0.2.100:9418=127.0.0.1:19418", "10.0.2.101:80=127.0.0.1:8081")
    assert config.api == Config().api  # untouched sections keep their defaults
    aliases = parse_config("[api]\nimage-aliases = debian/stable=debian/bookworm, a/b=a/c\n")
    assert aliases.api.image_aliases == ("debian/stable=debian/bookworm", "a/b=a/c")


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.conf")


def test_environment_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.conf"
    path.write_text("[worker]\nslots = 7\n")
    monkeypatch.setenv("BUILDWORKER_CONFIG", str(path))
    assert load_config(None).worker.slots == 7
    assert load_config(None).source == path


def _uncommented_example() -> str:
    # "# key = value" lines become "key = value"; prose comments stay comments.
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        match = re.match(r"^# ([a-z0-9-]+) =(.*)$", line)
        lines.append(f"{match.group(1)} ={match.group(2)}" if match else line)
    return "\n".join(lines) + "\n"


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    missing = []
    for section, key, _default, _doc in describe():
        block = re.search(rf"^\[{section}\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
        if not block or not re.search(rf"^# {re.escape(key)} =", block.group(1), re.M):
            missing.append(f"{section}.{key}")
    assert missing == []


def test_example_defaults_are_the_real_defaults() -> None:
    text = _uncommented_example().replace("name = <hostname>", "")
    parsed = parse_config(text)
    defaults = Config()
    for section in ("api", "database", "store", "broker", "vm", "ssh", "client", "log"):
        assert getattr(parsed, section) == getattr(defaults, section), section
    assert parsed.worker.timeout == defaults.worker.timeout
    assert parsed.worker == defaults.worker
