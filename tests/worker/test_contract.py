"""The internal API's contract (`buildworker.contract`), as the worker's client reads answers."""

from __future__ import annotations

import httpx
import pytest

from buildworker.contract import ClaimAnswer, ClaimedSecret, HeartbeatAnswer, LogAnswer
from buildworker.worker.apiclient import InternalApiError, _answer

CLAIM = {
    "job_id": 7,
    "attempt": 1,
    "manifest": "image: debian/bookworm\n",
    "secrets": [{"uuid": "u", "name": "s", "type": "ssh_key", "data_b64": "eA==", "ref": "s"}],
    "image": "debian/bookworm",
    "arch": "amd64",
    "lease_seconds": 60.0,
    "timeout_seconds": 2700.0,
    "queued_at": "2026-12-02T17:40:00+00:00",
    "a_field_a_newer_api_added": True,
}


def test_a_claim_answer_is_read_into_the_model_and_unknown_fields_are_ignored() -> None:
    claim = _answer(ClaimAnswer, httpx.Response(200, json=CLAIM), "claim of job 7")
    assert (claim.job_id, claim.attempt, claim.image, claim.arch) == (
        7,
        1,
        "debian/bookworm",
        "amd64",
    )
    assert claim.secrets == [
        ClaimedSecret(uuid="u", name="s", type="ssh_key", data_b64="eA==", ref="s")
    ]
    assert claim.queued_at == "2026-12-02T17:40:00+00:00"
    assert "eA==" not in repr(claim.secrets[0])  # secret data stays out of reprs and logs


@pytest.mark.parametrize("missing", ["manifest", "job_id", "lease_seconds"])
def test_an_answer_missing_a_field_is_an_error_naming_it(missing: str) -> None:
    body = {k: v for k, v in CLAIM.items() if k != missing}
    with pytest.raises(
        InternalApiError, match=rf"claim of job 7: the answer does not fit .*{missing}"
    ):
        _answer(ClaimAnswer, httpx.Response(200, json=body), "claim of job 7")


def test_an_answer_that_is_not_json_is_an_error() -> None:
    with pytest.raises(InternalApiError, match="heartbeat of job 7: the answer does not fit"):
        _answer(
            HeartbeatAnswer,
            httpx.Response(200, text="<html>proxy error</html>"),
            "heartbeat of job 7",
        )


def test_a_wrong_type_is_named() -> None:
    with pytest.raises(InternalApiError, match="size"):
        _answer(LogAnswer, httpx.Response(200, json={"size": "many"}), "log build of job 7")
