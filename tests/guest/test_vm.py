"""Real guests: libvirtd, QEMU (TCG here), the Debian image from genimg, paramiko over SSH.

One guest is booted per module and shared by the tests that only talk to it; the tests about
lifecycles (a second concurrent guest, a worker killed mid-boot) boot their own.
"""

from __future__ import annotations

import http.server
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from buildworker.guest.errors import (
    CommandCancelled,
    CommandTimeout,
    FileTooLarge,
    GuestFileError,
    HostKeyMismatch,
)
from buildworker.guest.hypervisor import Guest, Hypervisor
from buildworker.guest.images import ImageInfo
from buildworker.guest.isolation import current_ruleset
from buildworker.guest.ssh import GuestConnection, connect_guest

from .conftest import IMAGES, REPO, SSH_KEY, make_vm_config, unique_worker

pytestmark = [pytest.mark.vm, pytest.mark.slow]


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the host\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def host_servers() -> Iterator[dict[str, int]]:
    """HTTP servers on the host: one on loopback, one on all interfaces, one forwarded."""
    servers = {
        "loopback": http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello),
        "all_interfaces": http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Hello),
        "forwarded": http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello),
    }
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    yield {name: int(s.server_address[1]) for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def hv(vm_work_dir: Path, host_servers: dict[str, int]) -> Iterator[Hypervisor]:
    port = host_servers["forwarded"]
    config = make_vm_config(vm_work_dir, forwards=(f"10.0.2.2:{port}=127.0.0.1:{port}",))
    hypervisor = Hypervisor(config, worker_name=unique_worker("vm"))
    yield hypervisor
    hypervisor.reap_leftovers()
    hypervisor.close()


@pytest.fixture(scope="module")
def guest(hv: Hypervisor, bookworm: ImageInfo) -> Iterator[tuple[Guest, GuestConnection]]:
    booted = hv.boot(bookworm, job_id=1, attempt=1)
    try:
        conn = booted.wait_ready(hv.config.settle_timeout)
        yield booted, conn
    finally:
        booted.destroy()


def run(conn: GuestConnection, command: str, **kwargs: object) -> tuple[int, str]:
    chunks: list[bytes] = []
    status = conn.run(command, on_output=chunks.append, **kwargs)  # type: ignore[arg-type]
    return status, b"".join(chunks).decode(errors="replace")


def test_a_booted_guest_runs_uname_over_ssh(guest: tuple[Guest, GuestConnection]) -> None:
    booted, conn = guest
    status, output = run(conn, "uname -a; id -un; sudo -n true && echo sudo-ok; pwd")
    assert status == 0
    assert output.startswith("Linux build ")
    assert "build\r\n" in output and "sudo-ok" in output and "/home/build" in output
    assert booted.ssh_port > 0


def test_the_exit_status_and_the_pty_come_through(guest: tuple[Guest, GuestConnection]) -> None:
    _, conn = guest
    assert run(conn, "exit 3")[0] == 3
    assert run(conn, "tty")[1].startswith("/dev/pts/")
    assert "not a tty" in run(conn, "tty", pty=False)[1]


def test_output_is_streamed_while_the_command_runs(guest: tuple[Guest, GuestConnection]) -> None:
    _, conn = guest
    arrivals: list[tuple[float, bytes]] = []
    start = time.monotonic()
    status = conn.run(
        "for i in 1 2 3; do echo line$i; sleep 0.7; done",
        on_output=lambda data: arrivals.append((time.monotonic() - start, data)),
    )
    end = time.monotonic() - start
    assert status == 0
    assert b"".join(d for _, d in arrivals).replace(b"\r", b"") == b"line1\nline2\nline3\n"
    # Given three lines 0.7 s apart, the first arrives well before the command ends.
    assert len(arrivals) >= 2
    assert arrivals[0][0] < end - 1.0


def test_stdin_reaches_the_command_while_its_output_is_read(
    guest: tuple[Guest, GuestConnection],
) -> None:
    _, conn = guest
    # Given more input than the channel's window (2 MiB), echoed back as it is read: a
    # writer that sent everything before reading would stall the command
    data = os.urandom(3 * 1024 * 1024)
    chunks: list[bytes] = []
    status = conn.run("cat", pty=False, on_output=chunks.append, stdin=data, timeout=120)
    assert status == 0 and b"".join(chunks) == data
    # And end of file follows the input; an empty stdin is just that
    assert run(conn, "wc -c", pty=False, stdin=b"")[1].strip() == "0"
    assert run(conn, "read -r x; echo got=$x", pty=False, stdin=b"abc\n")[1] == "got=abc\n"
    # And a PTY would echo the input: refused before anything is sent
    with pytest.raises(ValueError, match="pty"):
        conn.run("cat", pty=True, stdin=b"x")


def test_a_file_uploaded_with_a_mode_reads_back_identically(
    guest: tuple[Guest, GuestConnection],
) -> None:
    _, conn = guest
    data = bytes(range(256)) * 1000  # binary, 256 KB
    conn.upload("~/.tasks/sub dir/blob", data, mode=0o750)
    assert run(conn, "stat -c '%a %U' ~/.tasks/'sub dir'/blob")[1].strip() == "750 build"
    sink = io.BytesIO()
    assert conn.download("~/.tasks/sub dir/blob", sink, max_size=len(data)) == len(data)
    assert sink.getvalue() == data
    conn.upload("/etc/buildworker-test", b"root file\n", mode=0o600, sudo=True)
    assert run(conn, "sudo stat -c '%a %U' /etc/buildworker-test")[1].strip() == "600 root"


def test_downloads_are_capped_and_missing_files_named(guest: tuple[Guest, GuestConnection]) -> None:
    _, conn = guest
    conn.upload("big", b"x" * 100_000)
    with pytest.raises(FileTooLarge, match="big"):
        conn.download("big", io.BytesIO(), max_size=50_000)
    with pytest.raises(GuestFileError, match="no-such-file"):
        conn.download("no-such-file", io.BytesIO(), max_size=10)


def test_timeouts_and_cancels_hang_up_the_command(guest: tuple[Guest, GuestConnection]) -> None:
    _, conn = guest
    start = time.monotonic()
    with pytest.raises(CommandTimeout):
        conn.run("sleep 60", timeout=1.0)
    assert time.monotonic() - start < 10
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(CommandCancelled):
        conn.run("sleep 60", cancel=cancel)
    # The connection is still usable afterwards.
    assert run(conn, "echo still-here")[1].strip() == "still-here"


def test_a_wrong_host_key_is_refused(guest: tuple[Guest, GuestConnection], hv: Hypervisor) -> None:
    booted, _ = guest
    with pytest.raises(HostKeyMismatch, match="not the image's"):
        connect_guest(
            booted.ssh_port,
            user="build",
            key=hv.ssh_key(),
            fingerprint="SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            timeout=60,
        )


def guest_tcp(conn: GuestConnection, port: int) -> int:
    """Exit status of a TCP connect from the guest to the host through the gateway."""
    return conn.run(f"timeout 8 bash -c 'exec 3<>/dev/tcp/10.0.2.2/{port}'", pty=False)


def test_the_guest_cannot_reach_services_on_the_host(
    guest: tuple[Guest, GuestConnection], host_servers: dict[str, int], hv: Hypervisor
) -> None:
    _, conn = guest
    assert hv.egress is not None
    hv.egress.apply_policy()
    assert "meta skuid @guest_users ct state new fib daddr type local drop" in current_ruleset()
    # RabbitMQ and PostgreSQL (both listen on the host), our HTTP servers on loopback and on
    # all interfaces: every connect through the gateway fails.
    for port in (5672, 5432, host_servers["loopback"], host_servers["all_interfaces"]):
        assert guest_tcp(conn, port) != 0, f"guest reached host port {port}"
    status, output = run(conn, f"curl -sS -m 8 http://10.0.2.2:{host_servers['loopback']}/")
    assert status != 0 and "hello from the host" not in output


def test_a_configured_forward_is_reachable(
    guest: tuple[Guest, GuestConnection], host_servers: dict[str, int], hv: Hypervisor
) -> None:
    # The positive control for the test above: the same path works for an allowed port.
    _, conn = guest
    # Re-applied first: a host still running the previous isolation code (another checkout)
    # may have rewritten the chain since the hypervisor started.
    assert hv.egress is not None
    hv.egress.apply_policy()
    status, output = run(conn, f"curl -sS -m 15 http://10.0.2.2:{host_servers['forwarded']}/")
    assert status == 0, output
    assert "hello from the host" in output


def test_the_guest_can_download_from_the_package_registry(
    guest: tuple[Guest, GuestConnection],
) -> None:
    _, conn = guest
    status, output = run(
        conn,
        "curl -sS -o /dev/null -w '%{http_code}' -m 60 "
        "http://deb.debian.org/debian/dists/bookworm/Release",
    )
    assert (status, output.strip()) == (0, "200")


def test_two_guests_run_at_once_on_distinct_ports_and_teardown_removes_everything(
    guest: tuple[Guest, GuestConnection], hv: Hypervisor, bookworm: ImageInfo
) -> None:
    first, first_conn = guest
    second = hv.boot(bookworm, job_id=2, attempt=1)
    try:
        second_conn = second.wait_ready(hv.config.settle_timeout)
        assert second.ssh_port != first.ssh_port
        # Each guest has its own overlay: a file written in one is absent in the other.
        second_conn.upload("only-here", b"2")
        assert run(second_conn, "cat only-here")[1] == "2"
        assert run(first_conn, "test -e only-here")[0] != 0
        overlay = second.directory / "overlay.qcow2"
        assert overlay.exists()
    finally:
        second.destroy()
    assert not second.directory.exists()
    conn = libvirt.open("qemu:///system")
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName(second.domain_name)
    finally:
        conn.close()
    second.destroy()  # idempotent
    # The shared guest is untouched.
    assert run(first_conn, "echo alive")[1].strip() == "alive"


def test_destroying_a_settling_guest_ends_wait_ready_at_once(
    hv: Hypervisor, bookworm: ImageInfo
) -> None:
    # The runner cancels a job during boot by destroying the guest from another thread.
    booted = hv.boot(bookworm, job_id=3, attempt=1)
    outcome: dict[str, BaseException] = {}

    def settle() -> None:
        try:
            booted.wait_ready(300)
        except BaseException as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=settle)
    waiter.start()
    time.sleep(0.5)
    start = time.monotonic()
    booted.destroy()
    waiter.join(30)
    assert not waiter.is_alive()
    assert time.monotonic() - start < 10
    assert isinstance(outcome.get("error"), CommandCancelled)
    assert not booted.directory.exists()


KILLED_WORKER = """
import sys
from pathlib import Path
from buildworker.config import VmConfig
from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageCatalogue

work_dir, worker, images, key = sys.argv[1:5]
hv = Hypervisor(VmConfig(ssh_key=Path(key), work_dir=Path(work_dir)), worker_name=worker)
guest = hv.boot(ImageCatalogue(Path(images)).resolve("debian/bookworm", None), job_id=7, attempt=1)
print("DOMAIN", guest.domain_name, flush=True)
guest.wait_ready(600)  # killed while the guest boots
"""


def test_a_worker_killed_mid_boot_leaves_nothing_after_the_restart_reaps(
    vm_work_dir: Path, bookworm: ImageInfo
) -> None:
    worker = unique_worker("kill")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, str(vm_work_dir), worker, str(IMAGES), str(SSH_KEY)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        name = ""
        for line in proc.stdout:  # structlog events go to stdout too
            if line.startswith("DOMAIN "):
                name = line.split()[1]
                break
        assert name == f"buildworker-{worker}-7-1"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    restarted = Hypervisor(make_vm_config(vm_work_dir), worker_name=worker)
    conn = libvirt.open("qemu:///system")
    try:
        # Given the crash: the domain still runs and its overlay is still there.
        assert conn.lookupByName(name).isActive()
        assert (vm_work_dir / name / "overlay.qcow2").exists()
        # When the worker starts again and reaps:
        assert restarted.reap_leftovers() == [name]
        # Then nothing is left behind.
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName(name)
        assert not (vm_work_dir / name).exists()
        assert restarted.reap_leftovers() == []
    finally:
        restarted.reap_leftovers()
        restarted.close()
        conn.close()
