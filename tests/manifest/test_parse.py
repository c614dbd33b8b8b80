"""Valid manifests: every top-level key, the types that come out, the warnings."""

from __future__ import annotations

import textwrap

import buildworker.manifest as manifest_module
from buildworker.manifest import FieldError, Manifest, Source, Task, Trigger, parse_manifest

FULL = textwrap.dedent(
    """\
    image: debian/bookworm
    arch: amd64
    packages:
      - build-essential
      - git
    repositories:
      extra: https://deb.example.org/debian bookworm main 0123456789ABCDEF
    sources:
      - https://git.sr.ht/~alice/project
      - docs::https://git.sr.ht/~alice/docs#v1.0
    tasks:
      - build: |
          cd project
          make
      - test_all-2: make check
    triggers:
      - action: email
        condition: failure
        to: Alice <alice@example.org>
        cc: bob@example.org
      - action: webhook
        condition: always
        url: https://hooks.example.org/build
    environment:
      NAME: project
      COUNT: 1000000
      RATIO: 0.5
      DEBUG: true
      EMPTY:
      LIST: [a, 1, false]
    secrets:
      - 3b0ea9d2-1b6b-4bb7-9a52-6c5d1e0f4a11
      - deploy-key
    shell: false
    artifacts:
      - project/out.tar.gz
      - project/docs/manual.pdf
    oauth: pages.sr.ht/PAGES:RW builds.sr.ht/JOBS:RO
    """
)


def test_every_top_level_key_is_read() -> None:
    m = parse_manifest(FULL)
    assert m == Manifest(
        image="debian/bookworm",
        arch="amd64",
        packages=("build-essential", "git"),
        repositories={"extra": "https://deb.example.org/debian bookworm main 0123456789ABCDEF"},
        sources=("https://git.sr.ht/~alice/project", "docs::https://git.sr.ht/~alice/docs#v1.0"),
        tasks=(Task("build", "cd project\nmake\n"), Task("test_all-2", "make check")),
        triggers=(
            Trigger(
                "email", "failure", {"to": "Alice <alice@example.org>", "cc": "bob@example.org"}
            ),
            Trigger("webhook", "always", {"url": "https://hooks.example.org/build"}),
        ),
        environment={
            "NAME": "project",
            "COUNT": 1000000,
            "RATIO": 0.5,
            "DEBUG": True,
            "EMPTY": None,
            "LIST": ["a", 1, False],
        },
        secrets=("3b0ea9d2-1b6b-4bb7-9a52-6c5d1e0f4a11", "deploy-key"),
        shell=False,
        artifacts=("project/out.tar.gz", "project/docs/manual.pdf"),
        oauth="pages.sr.ht/PAGES:RW builds.sr.ht/JOBS:RO",
        warnings=(),
    )
    assert m.parsed_sources() == [
        Source("git", "https://git.sr.ht/~alice/project", "project", None),
        Source("git", "https://git.sr.ht/~alice/docs", "docs", "v1.0"),
    ]


def test_minimal_manifest_gets_defaults() -> None:
    m = parse_manifest("image: alpine/edge\ntasks:\n- a: echo hi\n")
    assert (m.arch, m.packages, m.repositories, m.sources, m.triggers) == (None, (), {}, (), ())
    assert (m.environment, m.secrets, m.shell, m.artifacts, m.oauth) == ({}, (), False, (), None)


def test_integers_stay_integers_and_yaml11_booleans_are_booleans() -> None:
    m = parse_manifest(
        "image: a\ntasks: [{a: b}]\n"
        "environment: {BIG: 1234567, T: TRUE, F: off, Q: 'on', S: '10'}\n"
    )
    assert m.environment == {"BIG": 1234567, "T": True, "F": False, "Q": "on", "S": "10"}
    assert type(m.environment["BIG"]) is int


def test_timestamps_stay_the_text_written() -> None:
    m = parse_manifest("image: a\ntasks: [{a: b}]\nenvironment: {DAY: 2024-02-29}\n")
    assert m.environment == {"DAY": "2024-02-29"}


def test_environment_keeps_manifest_order() -> None:
    m = parse_manifest("image: a\ntasks: [{a: b}]\nenvironment: {Z: 1, A: 2, M: 3}\n")
    assert list(m.environment) == ["Z", "A", "M"]


def test_shell_true_allows_no_tasks() -> None:
    m = parse_manifest("image: debian/bookworm\nshell: true\n")
    assert m.shell is True and m.tasks == ()


def test_explicit_nulls_mean_absent() -> None:
    m = parse_manifest(
        "image: a\ntasks: [{a: b}]\narch:\npackages:\nsources:\nenvironment:\nsecrets:\n"
        "artifacts:\ntriggers:\nrepositories:\noauth:\nshell:\n"
    )
    assert (m.arch, m.packages, m.environment, m.shell, m.oauth) == (None, (), {}, False, None)


def test_empty_flow_mapping_environment_is_valid() -> None:
    assert parse_manifest("image: a\ntasks: [{a: b}]\nenvironment: {}\n").environment == {}


def test_unknown_keys_are_ignored_with_a_warning() -> None:
    m = parse_manifest("image: a\ntasks: [{a: b}]\nvariables: {X: 1}\nrequires: [x]\n")
    assert m.warnings == (
        FieldError("variables", "unknown key, ignored"),
        FieldError("requires", "unknown key, ignored"),
    )


def test_unknown_trigger_keys_are_warned_about() -> None:
    m = parse_manifest(
        "image: a\ntasks: [{a: b}]\n"
        "triggers: [{action: email, condition: always, to: x@example.org, subject: hi}]\n"
    )
    assert m.triggers[0].options == {"to": "x@example.org"}
    assert m.warnings == (FieldError("triggers[0].subject", "unknown key, ignored"),)


def test_duplicate_keys_last_wins_with_a_warning() -> None:
    m = parse_manifest(
        "image: a\nimage: b\ntasks: [{a: b}]\nenvironment:\n  X: 1\n  Y: 2\n  X: 3\n"
    )
    assert m.image == "b"
    assert m.environment == {"X": 3, "Y": 2}
    assert m.warnings == (
        FieldError("image", "duplicate key (the last value wins)"),
        FieldError("environment.X", "duplicate key (the last value wins)"),
    )


def test_scripts_are_kept_verbatim() -> None:
    m = parse_manifest("image: a\ntasks:\n  - a: |\n      echo one\n\n      echo two\n")
    assert m.tasks == (Task("a", "echo one\n\necho two\n"),)


def test_empty_script_is_a_warning_not_an_error() -> None:
    m = parse_manifest("image: a\ntasks:\n  - noop:\n")
    assert m.tasks == (Task("noop", ""),)
    assert m.warnings == (FieldError("tasks[0]", "task 'noop' has an empty script"),)


def test_task_name_rules_accept_the_documented_alphabet() -> None:
    name = "a" * 128
    m = parse_manifest(f"image: a\ntasks: [{{{name}: x}}, {{0-9_z: y}}, {{tasks: z}}]\n")
    assert [t.name for t in m.tasks] == [name, "0-9_z", "tasks"]


def test_secret_name_bounds_are_inclusive() -> None:
    m = parse_manifest("image: a\ntasks: [{a: b}]\nsecrets: [abc, " + "s" * 512 + "]\n")
    assert m.secrets == ("abc", "s" * 512)


def test_email_trigger_with_cc_only_is_accepted() -> None:
    m = parse_manifest(
        "image: a\ntasks: [{a: b}]\ntriggers: [{action: email, condition: success, cc: c@d.e}]\n"
    )
    assert m.triggers == (Trigger("email", "success", {"cc": "c@d.e"}),)


def test_document_start_marker_and_comments_are_fine() -> None:
    m = parse_manifest("# comment\n---\nimage: a # trailing\ntasks: [{a: b}]\n...\n")
    assert m.image == "a"


def test_public_names_are_pinned() -> None:
    assert sorted(manifest_module.__all__) == [
        "DEFAULT_MAX_ARTIFACTS",
        "DEFAULT_MAX_SIZE",
        "EnvValue",
        "FieldError",
        "Manifest",
        "ManifestError",
        "RESERVED_SHELL_NAMES",
        "Source",
        "Task",
        "Trigger",
        "parse_manifest",
        "parse_source",
    ]
    for name in manifest_module.__all__:
        assert hasattr(manifest_module, name)


def test_tilde_in_artifact_path_is_a_warning() -> None:
    m = parse_manifest("image: a\ntasks: [{a: b}]\nartifacts: [~/out.tar, other/lib.so]\n")
    assert m.artifacts == ("~/out.tar", "other/lib.so")
    assert m.warnings == (
        FieldError("artifacts[0]", "'~' is not expanded: paths are relative to the home directory"),
    )


def test_same_repository_name_twice_needs_distinct_directories() -> None:
    m = parse_manifest(
        "image: a\ntasks: [{a: b}]\n"
        "sources: [https://a.example/lib, 'alt::https://b.example/lib']\n"
    )
    assert [s.directory for s in m.parsed_sources()] == ["lib", "alt"]


def test_worker_variables_in_the_manifest_are_warned_about() -> None:
    m = parse_manifest("image: a\ntasks: [{a: b}]\nenvironment: {JOB_ID: 5, CI_NAME: x, OK: 1}\n")
    assert m.environment == {"JOB_ID": 5, "CI_NAME": "x", "OK": 1}
    assert m.warnings == (
        FieldError("environment.JOB_ID", "set by the worker; this value is ignored"),
        FieldError("environment.CI_NAME", "set by the worker; this value is ignored"),
    )
