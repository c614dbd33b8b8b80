"""The step plan and task semantics, without a VM."""

from __future__ import annotations

import base64

import pytest

from buildworker.contract import ClaimedSecret
from buildworker.manifest import parse_manifest, parse_source
from buildworker.secret_types import SECRET_TYPES
from buildworker.worker.context import JobSpec, SecretMaterial, home_path
from buildworker.worker.errors import BuildFailed
from buildworker.worker.pipeline import STEPS, plan
from buildworker.worker.steps.artifacts import guest_path
from buildworker.worker.steps.run_tasks import TaskOutcome, statuses_after
from buildworker.worker.steps.sources import PRIVATE_REPO_HINT, clone_commands

NAMES = ["a", "b", "c", "d"]


def test_steps_are_in_builds_sr_ht_order() -> None:
    # builds.sr.ht's tasks, environment and secrets are the one "setup" step
    assert [s.name for s in STEPS] == [
        "setup",
        "repositories",
        "packages",
        "sources",
        "run-tasks",
        "artifacts",
    ]


def test_a_minimal_manifest_plans_only_the_steps_it_needs() -> None:
    spec = JobSpec(1, 1, parse_manifest("image: debian/bookworm\ntasks:\n- a: echo\n"))
    assert [s.name for s in plan(spec)] == ["setup", "run-tasks"]


def test_a_full_manifest_plans_every_step() -> None:
    manifest = parse_manifest(
        "image: debian/bookworm\npackages: [curl]\nrepositories: {x: 'http://a b c'}\n"
        "sources: [https://git.example/r]\nsecrets: [abc]\nartifacts: [out.txt]\n"
        "tasks:\n- a: echo\n"
    )
    secret = SecretMaterial("u", "abc", "plaintext_file", b"data", "~/x", 0o600)
    assert len(plan(JobSpec(1, 1, manifest, secrets=(secret,)))) == len(STEPS)
    # Secrets off (the claim sends none): setup still runs (task files, ~/.buildenv)
    assert len(plan(JobSpec(1, 1, manifest))) == len(STEPS)


def test_all_tasks_succeeding() -> None:
    outcomes = [TaskOutcome(0)] * 4
    assert statuses_after(NAMES, outcomes) == dict.fromkeys(NAMES, "success")


def test_a_failed_task_skips_the_rest() -> None:
    assert statuses_after(NAMES, [TaskOutcome(0), TaskOutcome(2)]) == {
        "a": "success",
        "b": "failed",
        "c": "skipped",
        "d": "skipped",
    }


def test_complete_build_skips_the_rest_and_succeeds() -> None:
    assert statuses_after(NAMES, [TaskOutcome(0, complete_build=True)]) == {
        "a": "success",
        "b": "skipped",
        "c": "skipped",
        "d": "skipped",
    }


def test_tasks_not_reached_stay_pending() -> None:
    assert statuses_after(NAMES, [TaskOutcome(0)]) == {
        "a": "success",
        "b": "pending",
        "c": "pending",
        "d": "pending",
    }


def test_git_source_with_ref_clones_checks_out_and_updates_submodules() -> None:
    commands = clone_commands(parse_source("https://git.example/x/repo.git#v1.0"))
    assert [c for c, _ in commands] == [
        "GIT_SSH_COMMAND='ssh -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no'"
        " git clone https://git.example/x/repo.git repo",
        "cd repo && git checkout -q v1.0",
        "cd repo && GIT_SSH_COMMAND='ssh -o UserKnownHostsFile=/dev/null -o "
        "StrictHostKeyChecking=no' git submodule update --init --recursive",
    ]
    assert commands[0][1] == PRIVATE_REPO_HINT


def test_hg_and_dir_forms_and_unknown_scm() -> None:
    commands = clone_commands(parse_source("dest::hg+https://hg.example/r#tip"))
    assert commands[0][0].startswith("hg clone -e ") and commands[0][0].endswith(
        "https://hg.example/r dest"
    )
    assert commands[1][0] == "cd dest && hg update -y tip"
    with pytest.raises(BuildFailed, match="Unknown scm: svn"):
        clone_commands(parse_source("svn+https://x.example/r"))


def test_shell_metacharacters_in_sources_are_quoted() -> None:
    commands = clone_commands(parse_source("https://git.example/r;id#$(id)"))
    assert "'https://git.example/r;id'" in commands[0][0]
    assert commands[1][0].endswith("git checkout -q '$(id)'")


def test_secret_from_claim_decodes_and_names_bad_fields() -> None:
    item = {
        "uuid": "u-1",
        "name": "token",
        "type": "plaintext_file",
        "data_b64": base64.b64encode(b"s3cret").decode(),
        "path": "~/t",
        "mode": 0o640,
    }
    secret = SecretMaterial.from_claim(ClaimedSecret.model_validate(item))
    assert (secret.data, secret.mode) == (b"s3cret", 0o640)
    assert "s3cret" not in repr(secret)
    with pytest.raises(ValueError, match=r"secrets\.type"):
        SecretMaterial.from_claim(ClaimedSecret.model_validate({**item, "type": "env"}))
    with pytest.raises(ValueError, match=r"secrets\.data_b64"):
        SecretMaterial.from_claim(ClaimedSecret.model_validate({**item, "data_b64": "***"}))
    with pytest.raises(ValueError, match=r"secrets\.mode"):
        SecretMaterial.from_claim(ClaimedSecret.model_validate({**item, "mode": "rw"}))
    # an octal string, as some API versions sent it
    assert (
        SecretMaterial.from_claim(ClaimedSecret.model_validate({**item, "mode": "640"})).mode
        == 0o640
    )


@pytest.mark.parametrize("kind", SECRET_TYPES)
def test_every_type_the_api_stores_is_accepted_from_a_claim(kind: str) -> None:
    # One tuple for both sides: a type the API lets a user store never strands a build.
    item = {"uuid": "u-1", "type": kind, "data_b64": base64.b64encode(b"x").decode()}
    assert SecretMaterial.from_claim(ClaimedSecret.model_validate(item)).type == kind


def test_guest_paths() -> None:
    assert home_path("/home/build", "~/.config/x y") == "'/home/build/.config/x y'"
    assert home_path("/home/build", "rel") == "/home/build/rel"
    assert home_path("/home/build", "/etc/x") == "/etc/x"
    assert guest_path("/home/build", "out/a.txt") == "/home/build/out/a.txt"
    assert guest_path("/home/build", "/tmp/a") == "/tmp/a"
