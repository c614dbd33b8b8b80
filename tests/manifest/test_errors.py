"""Bad manifests and the exact error text each one gets."""

from __future__ import annotations

import pytest

from buildworker.manifest import FieldError, ManifestError, parse_manifest

OK_HEAD = "image: debian/bookworm\ntasks:\n  - build: make\n"


def errors_of(text: str, **kwargs: int) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, **kwargs)
    # The exception message is the joined list, as the interface promises.
    assert str(info.value) == "; ".join(str(e) for e in info.value.errors)
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "image: debian/bookworm\ntasks: [{Build: x}]",
            "tasks[0]: invalid task name 'Build' (use a-z, 0-9, _ and -)",
        ),
        (
            "image: debian/bookworm\ntasks: [{a: x}, {b: y}, {'has space': z}]",
            "tasks[2]: invalid task name 'has space' (use a-z, 0-9, _ and -)",
        ),
        (
            "image: debian/bookworm\ntasks: [{" + "a" * 129 + ": x}]",
            "tasks[0]: task name is longer than 128 characters",
        ),
        (
            "image: debian/bookworm\ntasks: [{build: x}, {build: y}]",
            "tasks[1]: duplicate task name 'build' (first in tasks[0])",
        ),
        (
            "image: debian/bookworm\ntasks: [{build: x, test: y}]",
            "tasks[0]: a task is a map with exactly one key: 'name: script'",
        ),
        (
            "image: debian/bookworm\ntasks: [make]",
            "tasks[0]: a task is a map with exactly one key: 'name: script'",
        ),
        (
            "image: debian/bookworm\n",
            "tasks: at least one task is required (unless shell: true)",
        ),
        (
            "image: debian/bookworm\ntasks: [{build: [make, test]}]",
            "tasks[0]: the script of 'build' must be a string, not a list",
        ),
        ("tasks: [{build: make}]", "image: required (e.g. image: debian/bookworm)"),
        ("image: 12\ntasks: [{build: make}]", "image: must be a string, not a number"),
        (
            "image: Debian/Stable\ntasks: [{build: make}]",
            "image: invalid image name 'Debian/Stable' (use lowercase letters, digits, '.', "
            "'_', '+', '-' and '/', e.g. debian/bookworm)",
        ),
        (
            OK_HEAD + "arch: 'amd 64'",
            "arch: invalid architecture 'amd 64' (e.g. amd64, x86_64, arm64)",
        ),
        (OK_HEAD + "packages: gcc", "packages: must be a list of strings, not a string"),
        (OK_HEAD + "packages: [gcc, [make]]", "packages[1]: must be a string, not a list"),
        (OK_HEAD + "repositories: [x]", "repositories: must be a map of name: source, not a list"),
        (
            OK_HEAD + "repositories: {extra: 3}",
            "repositories.extra: must be a string, not a number",
        ),
        (
            OK_HEAD + "environment:\n  FOO:\n    nested: map\n",
            "environment.FOO: nested maps are not supported (use a string, a number or a list)",
        ),
        (
            OK_HEAD + "environment: {BAR: [a, [b]]}",
            "environment.BAR[1]: list items must be strings, numbers or booleans",
        ),
        (
            OK_HEAD + "environment: {1ABC: x}",
            "environment.1ABC: invalid variable name "
            "(use A-Z, a-z, 0-9 and _, not starting with a digit)",
        ),
        (
            OK_HEAD + "environment: {UID: 1000}",
            "environment.UID: reserved: the shell sets this variable itself",
        ),
        (
            OK_HEAD + 'environment: {NUL: "a\\0b"}',
            "environment.NUL: contains a NUL character",
        ),
        (OK_HEAD + "environment: [A=1]", "environment: must be a map of NAME: value, not a list"),
        (
            OK_HEAD + "sources: [https://example.org/a, 42]",
            "sources[1]: must be a string, not a number",
        ),
        (
            OK_HEAD + "sources: ['svn+https://example.org/repo']",
            "sources[0]: unknown scm 'svn' (use git or hg)",
        ),
        (
            OK_HEAD + "sources: ['https://example.org/repo#--upload-pack=evil']",
            "sources[0]: ref must not start with '-'",
        ),
        (
            OK_HEAD + "sources: ['..::https://example.org/repo']",
            "sources[0]: cannot clone into directory '..'; use 'name::url'",
        ),
        (
            OK_HEAD + "sources: [https://a.example/lib.git, 'hg+https://b.example/lib']",
            "sources[1]: directory 'lib' is already used by sources[0]; use 'name::url'",
        ),
        (
            OK_HEAD + "sources: ['https://example.org/a b']",
            "sources[0]: must not contain whitespace or control characters",
        ),
        (
            OK_HEAD + "secrets: [ab]",
            "secrets[0]: must be a secret UUID or a name of 3 to 512 characters",
        ),
        (
            OK_HEAD + "secrets: [" + "s" * 513 + "]",
            "secrets[0]: must be a secret UUID or a name of 3 to 512 characters",
        ),
        (OK_HEAD + "shell: yes please", "shell: must be true or false, not a string"),
        (
            OK_HEAD + "triggers: [{action: email, condition: sometimes, to: a@example.org}]",
            "triggers[0].condition: unknown condition 'sometimes' (use always, success or failure)",
        ),
        (
            OK_HEAD + "triggers: [{action: email, to: a@example.org}]",
            "triggers[0].condition: required (always, success or failure)",
        ),
        (
            OK_HEAD + "triggers: [{action: irc, condition: always}]",
            "triggers[0].action: unknown trigger action 'irc' (use email or webhook)",
        ),
        (
            OK_HEAD + "triggers: [{action: email, condition: failure}]",
            "triggers[0].to: an email trigger needs 'to' (or 'cc')",
        ),
        (
            OK_HEAD + "triggers: [{action: webhook, condition: always}]",
            "triggers[0].url: required for a webhook trigger",
        ),
        (
            OK_HEAD + "triggers: [{action: webhook, condition: always, url: 'ftp://x/y'}]",
            "triggers[0].url: must be an http:// or https:// URL, not 'ftp://x/y'",
        ),
        (
            OK_HEAD + "artifacts: [build/out.tar, dist/out.tar]",
            "artifacts[1]: basename 'out.tar' is already used by artifacts[0] "
            "(artifact basenames must be unique)",
        ),
        (OK_HEAD + "artifacts: [build/]", "artifacts[0]: 'build/' does not name a file"),
        (OK_HEAD + "artifacts: ['']", "artifacts[0]: must not be empty"),
        (
            OK_HEAD + "oauth: 'pages.sr.ht/PAGES:RW everything'",
            "oauth: invalid grant 'everything' (expected service/SCOPE, service/SCOPE:RO or "
            "service/SCOPE:RW)",
        ),
        (OK_HEAD + "oauth: [a]", "oauth: must be a string, not a list"),
        ("- image: debian/bookworm", "yaml: the manifest must be a map of keys, not a list"),
        ("just a string", "yaml: the manifest must be a map of keys, not a string"),
        ("", "yaml: the manifest is empty"),
        ("# nothing but a comment\n", "yaml: the manifest is empty"),
        (
            OK_HEAD + "---\n" + OK_HEAD,
            "yaml: more than one YAML document (only one manifest per file)",
        ),
        ("a: &a [*a]\n", "yaml: recursive alias"),
    ],
)
def test_bad_manifest_gets_exact_error(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_all_errors_are_collected_in_key_order() -> None:
    text = (
        "tasks: [{Build: x}, {ok: y}, {ok: z}]\nenvironment: {GOOD: 1, BAD-NAME: 2}\nsecrets: [x]\n"
    )
    assert errors_of(text) == [
        "image: required (e.g. image: debian/bookworm)",
        "tasks[0]: invalid task name 'Build' (use a-z, 0-9, _ and -)",
        "tasks[2]: duplicate task name 'ok' (first in tasks[1])",
        "environment.BAD-NAME: invalid variable name "
        "(use A-Z, a-z, 0-9 and _, not starting with a digit)",
        "secrets[0]: must be a secret UUID or a name of 3 to 512 characters",
    ]


def test_manifest_over_the_size_cap_is_refused_before_parsing() -> None:
    text = OK_HEAD + "# " + "x" * 16384 + "\n"
    assert errors_of(text) == ["manifest: must be at most 16384 bytes"]


def test_size_cap_counts_bytes_not_characters() -> None:
    # 8000 two-byte characters: 8000 characters but more than 16 KiB... of 2-byte UTF-8.
    text = OK_HEAD + "# " + "é" * 8200 + "\n"
    assert len(text) < 16384 < len(text.encode())
    assert errors_of(text) == ["manifest: must be at most 16384 bytes"]


def test_size_cap_is_configurable() -> None:
    assert errors_of(OK_HEAD, max_size=10) == ["manifest: must be at most 10 bytes"]
    assert parse_manifest(OK_HEAD, max_size=len(OK_HEAD)).image == "debian/bookworm"


def test_artifact_count_is_capped_at_eight_by_default() -> None:
    nine = "".join(f"  - out/file{i}\n" for i in range(9))
    assert errors_of(OK_HEAD + "artifacts:\n" + nine) == [
        "artifacts: at most 8 artifacts are allowed, got 9"
    ]
    eight = "".join(f"  - out/file{i}\n" for i in range(8))
    assert len(parse_manifest(OK_HEAD + "artifacts:\n" + eight).artifacts) == 8


def test_artifact_cap_is_configurable() -> None:
    two = OK_HEAD + "artifacts: [a, b]\n"
    assert errors_of(two, max_artifacts=1) == ["artifacts: at most 1 artifacts are allowed, got 2"]


def test_billion_laughs_is_refused() -> None:
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 9):
        prev = chr(ord("a") + level - 1)
        this = chr(ord("a") + level)
        levels.append(f"{this}: &{this} [{', '.join(['*' + prev] * 9)}]")
    text = "\n".join(levels) + "\n"
    assert len(text) < 16384
    assert errors_of(text) == ["yaml: aliases expand to more than 100000 nodes (alias bomb?)"]


def test_modest_aliases_are_fine() -> None:
    text = (
        "image: debian/bookworm\n"
        "x-script: &build make -j2\n"
        "tasks:\n  - build: *build\n  - again: *build\n"
    )
    manifest = parse_manifest(text)
    assert [t.script for t in manifest.tasks] == ["make -j2", "make -j2"]
    assert manifest.warnings == (FieldError("x-script", "unknown key, ignored"),)


def test_deep_nesting_is_a_yaml_error_not_a_crash() -> None:
    depth = 5000
    text = "image: " + "[" * depth + "]" * depth
    [message] = errors_of(text)
    assert message.startswith("yaml: ")


def test_impossible_date_is_not_a_crash() -> None:
    # PyYAML's own timestamp constructor raises ValueError on month 13.
    manifest = parse_manifest(OK_HEAD + "environment: {WHEN: 2001-13-45}")
    assert manifest.environment == {"WHEN": "2001-13-45"}


def test_warnings_travel_with_the_error() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest("variables: {A: 1}\ntasks: [{a: b}]\n")
    assert info.value.warnings == [FieldError("variables", "unknown key, ignored")]


def test_bytes_are_accepted_as_utf8_and_refused_otherwise() -> None:
    assert parse_manifest(OK_HEAD.encode()).image == "debian/bookworm"
    with pytest.raises(ManifestError) as info:
        parse_manifest(b"image: \xff\n")
    assert [str(e) for e in info.value.errors] == ["manifest: not UTF-8 text (byte 7)"]


def test_yaml_syntax_errors_name_line_and_column() -> None:
    # The wording comes from libyaml (or PyYAML's pure-Python parser); the place is ours.
    [message] = errors_of("image: debian/bookworm\ntasks: [unclosed\n")
    assert message.startswith("yaml: ") and message.endswith(" (line 3, column 1)")
    [message] = errors_of("image: debian/bookworm\n\x08\n")
    assert message.startswith("yaml: unacceptable character #x0008: ")
    assert message.endswith(" (line 2, column 1)")
