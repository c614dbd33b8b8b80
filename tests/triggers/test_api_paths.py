"""record_job_triggers right after the API tier's own terminal transitions (end_running,
cancel), as the lead wires it: the ORM objects those leave stale are reloaded, tasks are
settled, and what the sender then renders is the final state."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from trigger_helpers import ORIGIN, HookServer, add_job, add_user, manifest_with

from buildworker.api.lifecycle import cancel
from buildworker.api.reaper import end_running
from buildworker.config import ApiConfig, Config, TriggersConfig
from buildworker.db.models import TriggerDelivery
from buildworker.triggers.dispatch import record_job_triggers
from buildworker.triggers.sender import TriggerSender


def hook(url: str, condition: str) -> str:
    return f"  - action: webhook\n    condition: {condition}\n    url: {url}\n"


def sender(sessions: sessionmaker[Session]) -> TriggerSender:
    config = Config(
        api=ApiConfig(origin=ORIGIN), triggers=TriggersConfig(webhook_allow_private=True)
    )
    return TriggerSender(sessions, config)


def test_after_end_running(sessions: sessionmaker[Session], hook_server: HookServer) -> None:
    with sessions() as session:
        job = add_job(
            session,
            add_user(session),
            manifest=manifest_with(hook(hook_server.url, "failure")),
            task_statuses={"build": "success", "_hidden": "running", "test": "pending"},
        )
        session.commit()
        # When the worker's finish (or the reaper) ends the running attempt as failed
        assert end_running(session, job.id, 1, "failed", "exit status 1")
        record_job_triggers(session, job)  # the stale ORM object, as the caller holds it
        session.commit()
    assert sender(sessions).run_once() == 1
    payload = json.loads(hook_server.requests[0].body)
    # Then the payload shows the settled tasks and the final status
    assert payload["status"] == "failed"
    assert [(t["name"], t["status"]) for t in payload["tasks"]] == [
        ("build", "success"),
        ("_hidden", "failed"),
        ("test", "skipped"),
    ]


def test_after_cancel_of_a_queued_job(
    sessions: sessionmaker[Session], hook_server: HookServer
) -> None:
    with sessions() as session:
        job = add_job(
            session,
            add_user(session),
            manifest=manifest_with(
                hook(hook_server.url, "failure") + hook("http://127.0.0.1:9/x", "success")
            ),
            status="queued",
            runner=None,
        )
        session.commit()
        assert cancel(session, job, "cancelled by ~alice") == "cancelled"
        record_job_triggers(session, job)
        session.commit()
        rows = list(session.scalars(select(TriggerDelivery)))
        assert [(r.index, r.fired_status) for r in rows] == [(0, "cancelled")]
    assert sender(sessions).run_once() == 1
    payload = json.loads(hook_server.requests[0].body)
    assert (payload["status"], payload["setup_log"], payload["runner"]) == (
        "cancelled",
        None,
        None,
    )


def test_a_running_job_whose_cancel_is_only_requested_fires_nothing_yet(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        job = add_job(
            session,
            add_user(session),
            manifest=manifest_with(hook("http://127.0.0.1:9/x", "always")),
        )
        session.commit()
        assert cancel(session, job, "cancelled by ~alice") == "requested"
        assert record_job_triggers(session, job) == []
        session.commit()
        assert list(session.scalars(select(TriggerDelivery))) == []
