"""What users read: builds.sr.ht's banner and standby words, and our connect command."""

from __future__ import annotations

from buildworker.ssh.texts import banner, connect_command, not_on_this_host, standby_notice, until


def test_banner_as_builds_sr_ht_prints_it() -> None:
    text = banner(42, "failed", "https://ci.example/~alice/job/42", deadline=1600.0, now=1000.0)
    assert text == (
        "Connected to build job #42 (failed): https://ci.example/~alice/job/42\n"
        "Your VM will be terminated 10 minutes from now, or when you log out.\n"
    )


def test_until_is_humanized() -> None:
    assert until(1000.0 + 3 * 3600, now=1000.0) == "3 hours from now"
    assert until(1030.0, now=1000.0) == "30 seconds from now"


def test_connect_command_names_the_port_only_when_it_is_not_22() -> None:
    assert connect_command("builds", "ci.example", 22, 7) == "ssh -t builds@ci.example connect 7"
    assert connect_command("builds", "ci.example", 2222, 7) == (
        "ssh -t -p 2222 builds@ci.example connect 7"
    )


def test_standby_notice() -> None:
    text = standby_notice(600, "ssh -t builds@h connect 7")
    assert text.startswith(
        "Build failed.\nThe build environment will be kept alive for 10 minutes.\n"
    )
    assert "\n\tssh -t builds@h connect 7\n" in text
    assert standby_notice(30, "x").count("1 minute.") == 1


def test_not_on_this_host_says_where_or_that_it_is_gone() -> None:
    assert "runs on w2, not on this host (w1)" in not_on_this_host(5, "running", "w2", "w1")
    assert "is failed; its build environment is gone" in not_on_this_host(5, "failed", "w1", "w1")
    assert "is queued" in not_on_this_host(5, "queued", None, "w1")
