"""Pure trigger logic: conditions, group status, and the texts builds.sr.ht writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from buildworker.triggers.render import (
    GroupView,
    JobView,
    TaskView,
    common_tag_prefix,
    condition_matches,
    encode_payload,
    go_duration,
    group_email_body,
    group_email_subject,
    group_payload,
    group_status,
    job_email_body,
    job_email_subject,
    job_payload,
    retry_delay,
)

ORIGIN = "https://ci.example.org"
T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def job(
    job_id: int = 42,
    status: str = "success",
    *,
    tags: tuple[str, ...] = (),
    note: str | None = None,
    runner: str | None = "host1",
    tasks: tuple[tuple[str, str], ...] = (("build", "success"),),
    seconds: float = 133,
    image: str = "debian/bookworm",
) -> JobView:
    return JobView(
        id=job_id,
        status=status,
        tags=tags,
        note=note,
        runner=runner,
        owner_name="alice",
        image=image,
        arch="amd64",
        created=T0,
        updated=T0 + timedelta(seconds=seconds),
        tasks=tuple(TaskView(name, st) for name, st in tasks),
    )


# --- conditions ------------------------------------------------------------------------------

MATRIX = {
    # status:      always, success, failure
    "success": (True, True, False),
    "failed": (True, False, True),
    "timeout": (True, False, True),
    "cancelled": (True, False, True),
    "running": (False, False, False),
    "queued": (False, False, False),
    "pending": (False, False, False),
}


@pytest.mark.parametrize("status", sorted(MATRIX))
@pytest.mark.parametrize("index,condition", list(enumerate(("always", "success", "failure"))))
def test_condition_matrix(status: str, index: int, condition: str) -> None:
    assert condition_matches(condition, status) is MATRIX[status][index]


@pytest.mark.parametrize("status", ["success", "failed"])
def test_unknown_condition_never_fires(status: str) -> None:
    assert condition_matches("sometimes", status) is False
    assert condition_matches("", status) is False


@pytest.mark.parametrize(
    "statuses,expected",
    [
        (["success", "success"], "success"),
        (["success", "failed", "success"], "failed"),
        (["timeout", "success", "cancelled"], "cancelled"),  # the last non-success job
        (["failed", "running"], None),
        (["success", "queued"], None),
        (["pending"], None),
        ([], None),
    ],
)
def test_group_status(statuses: list[str], expected: str | None) -> None:
    assert group_status(statuses) == expected


def test_retry_delay_doubles_and_is_capped() -> None:
    delays = [retry_delay(n, base_s=30, max_s=3600) for n in range(1, 10)]
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert retry_delay(10_000, base_s=1, max_s=5) == 5
    with pytest.raises(ValueError, match="attempts"):
        retry_delay(0, base_s=1, max_s=5)


@pytest.mark.parametrize(
    "seconds,text",
    [(0, "0s"), (0.9, "0s"), (45, "45s"), (60, "1m0s"), (133, "2m13s"), (3605, "1h0m5s")],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_common_tag_prefix() -> None:
    assert common_tag_prefix([("a", "b", "c"), ("a", "b", "d"), ()]) == ("a", "b")
    assert common_tag_prefix([("a", "b"), ("a",)]) == ("a",)  # sr.ht kept "a/b" here
    assert common_tag_prefix([("x",), ("y",)]) == ()
    assert common_tag_prefix([(), ()]) == ()


# --- job email -----------------------------------------------------------------------------


def test_job_email_subject_uses_tags_or_builds_sr_ht() -> None:
    assert job_email_subject(job(tags=("proj", "main"))) == "[proj/main] build success"
    assert job_email_subject(job(status="failed")) == "[builds.sr.ht] build failed"


def test_job_email_body_matches_builds_sr_ht() -> None:
    view = job(
        tags=("proj", "main"),
        status="failed",
        note="Fix the frobnicator",
        tasks=(
            ("build", "success"),
            ("_setup", "success"),
            ("test", "failed"),
            ("docs", "skipped"),
        ),
    )
    assert job_email_body(view, ORIGIN) == (
        "proj/main #42: FAILED in 2m13s\n"
        "\n"
        "Fix the frobnicator\n"
        "\n"
        "https://ci.example.org/~alice/job/42\n"
        "\n"
        "✓ build ✗ test - docs "
    )


def test_job_email_body_without_tags_or_note() -> None:
    assert job_email_body(job(seconds=7), ORIGIN) == (
        "Job #42: SUCCESS in 7s\n\nhttps://ci.example.org/~alice/job/42\n\n✓ build "
    )


# --- group email ---------------------------------------------------------------------------


def test_group_email() -> None:
    group = GroupView(
        id=7,
        note="release 1.2",
        owner_name="alice",
        created=T0,
        jobs=(
            job(1, "success", tags=("proj", "alpine"), seconds=60),
            job(2, "timeout", tags=("proj", "debian"), seconds=300),
            job(3, "success", image="alpine/edge", seconds=90),
        ),
    )
    status = group_status(j.status for j in group.jobs)
    assert status == "timeout"
    assert group_email_subject(group, status) == "[proj] build timeout"
    assert group_email_body(group, status, ORIGIN) == (
        "proj: TIMEOUT in 5m0s\n"
        "\n"
        "release 1.2\n"
        "\n"
        "✓ #1 SUCCESS proj/alpine https://ci.example.org/~alice/job/1\n"
        "✗ #2 TIMEOUT proj/debian https://ci.example.org/~alice/job/2\n"
        "✓ #3 SUCCESS alpine/edge https://ci.example.org/~alice/job/3\n"
    )


def test_group_email_without_tags_is_a_job_group() -> None:
    group = GroupView(7, None, "alice", T0, (job(1, "success"), job(2, "failed")))
    assert group_email_subject(group, "failed") == "[builds.sr.ht] build failed"
    body = group_email_body(group, "failed", ORIGIN)
    assert body.startswith("Job group: FAILED in 2m13s\n\n\n\n✓ #1 SUCCESS debian/bookworm ")
    # the status column is padded to the widest status
    assert "✗ #2 FAILED  debian/bookworm https://ci.example.org/~alice/job/2\n" in body


# --- payloads ------------------------------------------------------------------------------


def test_job_payload_has_the_fields_of_builds_sr_ht_in_order() -> None:
    view = job(status="failed", note="n", tasks=(("build", "failed"),), tags=("a", "b"))
    payload = job_payload(view, ORIGIN)
    assert list(payload)[:7] == ["id", "status", "setup_log", "tasks", "note", "runner", "owner"]
    assert payload == {
        "id": 42,
        "status": "failed",
        "setup_log": "https://ci.example.org/logs/42/log",
        "tasks": [
            {"name": "build", "status": "failed", "log": "https://ci.example.org/logs/42/build/log"}
        ],
        "note": "n",
        "runner": "host1",
        "owner": {"canonical_name": "~alice", "name": "alice"},
        "tags": "a/b",
        "image": "debian/bookworm",
        "arch": "amd64",
        "url": "https://ci.example.org/~alice/job/42",
    }


def test_job_payload_of_a_job_that_never_ran() -> None:
    payload = job_payload(job(status="cancelled", runner=None, tasks=()), ORIGIN)
    assert payload["setup_log"] is None
    assert payload["tasks"] is None  # sr.ht: null when the manifest had no tasks
    view = job(status="cancelled", runner=None, tasks=(("build", "pending"),))
    assert job_payload(view, ORIGIN)["tasks"] == [
        {"name": "build", "status": "pending", "log": None}
    ]


def test_group_payload_and_encoding() -> None:
    group = GroupView(7, None, "alice", T0, (job(1), job(2, "failed")))
    payload = group_payload(group, "failed", ORIGIN)
    assert payload["id"] == 7 and payload["status"] == "failed"
    assert [j["id"] for j in payload["jobs"]] == [1, 2]
    data = encode_payload(payload)
    assert json.loads(data) == payload
    assert b": " not in data and b", " not in data  # compact: the signed bytes are the sent bytes
    assert "✓".encode() not in data  # sanity: payloads carry no email marks
