"""Exact text of ~/.tasks/<name> and ~/.buildenv."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from buildworker.manifest import parse_manifest
from buildworker.render import (
    DEFAULT_PREAMBLE,
    render_buildenv,
    render_task_script,
    shell_quote,
)

HEADER = "#!/bin/sh\ncomplete-build() {\n\techo 1 > ~/.complete-build\n\texit 0\n}\n"


def test_default_preamble_is_builds_sr_ht_s() -> None:
    assert DEFAULT_PREAMBLE == (
        "#!/usr/bin/env bash\n"
        ". ~/.buildenv\n"
        "set -xe\n"
        "\n"
        "acurl() (\n"
        "\tset +x\n"
        '\tcurl --oauth2-bearer "$OAUTH2_TOKEN" "$@"\n'
        ")\n"
    )


def test_task_script_is_preamble_plus_script_plus_newline() -> None:
    assert render_task_script("make\nmake check\n") == DEFAULT_PREAMBLE + "make\nmake check\n\n"
    assert render_task_script("make") == DEFAULT_PREAMBLE + "make\n"


def test_image_preamble_replaces_the_default() -> None:
    assert render_task_script("echo hi", "#!/bin/rc -xe\n") == "#!/bin/rc -xe\necho hi\n"
    # A preamble without a final newline must not glue its last line to the script.
    assert render_task_script("echo hi", "#!/bin/rc -xe") == "#!/bin/rc -xe\necho hi\n"


def test_buildenv_exact_text() -> None:
    env = {
        "PLAIN": "value-1.2_x/y:z@w%+=,",
        "SPACES": "hello world",
        "QUOTE": "it's",
        "DOLLAR": "$HOME `id`",
        "EMPTY": "",
        "NULL": None,
        "BIG": 1000000,
        "NEG": -42,
        "FLOAT": 1.5,
        "HUGE": 1e20,
        "YES": True,
        "NO": False,
        "LIST": ["a b", "$x", 1, True, None, "it's", 2.5],
        "EMPTY_LIST": [],
    }
    assert render_buildenv(env) == HEADER + (
        "export PLAIN=value-1.2_x/y:z@w%+=,\n"
        "export SPACES='hello world'\n"
        "export QUOTE='it'\"'\"'s'\n"
        "export DOLLAR='$HOME `id`'\n"
        "export EMPTY=''\n"
        "export NULL=''\n"
        "export BIG=1000000\n"
        "export NEG=-42\n"
        "export FLOAT=1.5\n"
        "export HUGE=1e+20\n"
        "export YES=true\n"
        "export NO=false\n"
        "LIST=('a b' '$x' 1 true '' 'it'\"'\"'s' 2.5)\n"
        "EMPTY_LIST=()\n"
    )


def test_worker_variables_come_first_and_override_the_manifest() -> None:
    env = {"JOB_ID": "mine", "A": "1", "CI_NAME": "mine"}
    extra = {"CI_NAME": "sourcehut", "JOB_ID": "42", "JOB_URL": "https://ci.example.org/~u/job/42"}
    assert render_buildenv(env, extra) == HEADER + (
        "export CI_NAME=sourcehut\n"
        "export JOB_ID=42\n"
        "export JOB_URL='https://ci.example.org/~u/job/42'\n"
        "export A=1\n"
    )


def test_rendering_from_a_parsed_manifest_keeps_order_and_types() -> None:
    m = parse_manifest(
        "image: a\ntasks: [{a: b}]\nenvironment:\n  Z: 1234567\n  A: on\n  M: 'on'\n"
    )
    assert render_buildenv(m.environment) == HEADER + (
        "export Z=1234567\nexport A=true\nexport M=on\n"
    )


def test_invalid_names_are_refused_by_the_renderer_too() -> None:
    with pytest.raises(ValueError, match=r"^environment\.A-B: invalid variable name$"):
        render_buildenv({"A-B": "x"})


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("", "''"),
        ("abc", "abc"),
        ("a b", "'a b'"),
        ("'", "''\"'\"''"),
        ("é", "'é'"),
        ("a\nb", "'a\nb'"),
    ],
)
def test_shell_quote(value: str, quoted: str) -> None:
    assert shell_quote(value) == quoted


def test_example_tasks_run_against_their_rendered_buildenv(tmp_path: Path) -> None:
    # What a guest does with examples/hello.yml, minus the VM: ~/.buildenv and ~/.tasks/<name>
    # written by the renderers, each task run by bash in a fresh login-like environment.
    text = (Path(__file__).resolve().parents[2] / "examples" / "hello.yml").read_text()
    manifest = parse_manifest(text)
    extra = {"CI_NAME": "sourcehut", "JOB_ID": "7", "JOB_URL": "https://ci.example.org/~u/job/7"}
    (tmp_path / ".buildenv").write_text(render_buildenv(manifest.environment, extra))
    (tmp_path / ".tasks").mkdir()
    outputs = []
    for task in manifest.tasks:
        script = tmp_path / ".tasks" / task.name
        script.write_text(render_task_script(task.script))
        script.chmod(0o755)
        env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        result = subprocess.run(
            [str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0].startswith("Hello, world from job 7 on ")
    assert "release 1000000; words: one two words 3\n" in outputs[0]
    assert outputs[1] == "environment OK\n"
