"""libvirt provisioning: one transient domain per job on a qcow2 overlay, SSH on loopback.

A guest is ``buildworker-<worker>-<job>-<attempt>``, with its own directory under
``[vm] work-dir`` holding the overlay (backed by the shared base image, which is never
written) and the serial console log. Transient domains outlive a crashed worker (libvirtd
owns them), so a starting worker calls ``reap_leftovers()``: domains and directories with its
prefix are destroyed and deleted. ``Guest.destroy()`` always removes both, and is idempotent.

No libvirt exception escapes: they become ``VMError`` (``map_libvirt_errors``).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import libvirt
import paramiko
import structlog

from buildworker.arches import host_arch, libvirt_arch
from buildworker.config import VmConfig
from buildworker.guest.accel import AccelChoice, accel_for_guest, choose_accel, probe_host
from buildworker.guest.copyprep import TEMPLATE_PREP_TIMEOUT_S, template_prep_command
from buildworker.guest.domain import (
    DEFAULT_CMDLINE,
    DomainSpec,
    default_cmdline,
    domain_name,
    domain_prefix,
    parse_hostfwd_port,
    render_domain_xml,
)
from buildworker.guest.errors import VMError
from buildworker.guest.grants import EgressGrant
from buildworker.guest.images import ImageInfo
from buildworker.guest.isolation import parse_allow_networks, parse_forwards
from buildworker.guest.ports import is_hostfwd_conflict, pick_port
from buildworker.guest.snapshot import load_state, save_state
from buildworker.guest.snapstore import (
    FROZEN_NAME,
    STATE_NAME,
    Miss,
    Shape,
    Snapshot,
    SnapshotStore,
    shape_of,
)
from buildworker.guest.ssh import GuestConnection, load_private_key
from buildworker.guest.vm import CONSOLE_NAME, Guest

__all__ = ["Guest", "Hypervisor", "map_libvirt_errors"]

#: Attempts to start a domain when QEMU lost the race for its kernel-assigned port.
PORT_ATTEMPTS = 5
OVERLAY_NAME = "overlay.qcow2"

_log = structlog.get_logger()


def _quiet_libvirt(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised as VMError."""


libvirt.registerErrorHandler(_quiet_libvirt, None)


@contextlib.contextmanager
def map_libvirt_errors(what: str) -> Iterator[None]:
    """libvirt.libvirtError (and OSError/subprocess failures) → VMError naming the action."""
    try:
        yield
    except VMError:
        raise
    except libvirt.libvirtError as exc:
        raise VMError(f"{what}: libvirt: {exc.get_error_message() or exc}") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise VMError(f"{what}: {exc}") from exc


def _is_gone(exc: libvirt.libvirtError) -> bool:
    return exc.get_error_code() in (
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_OPERATION_INVALID,  # not running any more
    )


def _readable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` can read ``path`` (and traverse its parents), by mode bits."""
    try:
        groups = {gid, *(g.gr_gid for g in grp.getgrall() if pwd.getpwuid(uid).pw_name in g.gr_mem)}
    except KeyError:
        groups = {gid}

    def allowed(p: Path, bit_user: int, bit_group: int, bit_other: int) -> bool:
        st = p.stat()
        if st.st_uid == uid:
            return bool(st.st_mode & bit_user)
        if st.st_gid in groups:
            return bool(st.st_mode & bit_group)
        return bool(st.st_mode & bit_other)

    real = path.resolve()
    for parent in reversed(real.parents):
        if not allowed(parent, 0o100, 0o010, 0o001):
            return False
    return allowed(real, 0o400, 0o040, 0o004)


class Hypervisor:
    """Boots guests with libvirt on ``[vm] libvirt-uri``; picks KVM or TCG itself.

    Parameters: ``config`` the ``[vm]`` section; ``worker_name`` the ``[worker] name``
    (part of domain names, so workers sharing a host never reap each other's guests);
    ``isolate`` installs the nftables isolation rules (needs root; tests of pure parts
    may pass False).
    Raises VMError when libvirt cannot be reached or isolation cannot be applied.
    """

    def __init__(self, config: VmConfig, worker_name: str, *, isolate: bool = True):
        self.config = config
        self.worker_name = worker_name
        self.prefix = domain_prefix(worker_name)
        self.accel: AccelChoice = choose_accel(config.accel, probe_host())
        try:
            user = pwd.getpwnam(config.qemu_user)
        except KeyError:
            raise VMError(f"vm.qemu-user: no such user {config.qemu_user!r}") from None
        self.qemu_uid, self.qemu_gid = user.pw_uid, user.pw_gid
        self._forwards = parse_forwards(config.forwards)
        self._networks = parse_allow_networks(config.allow_networks)
        self._egress: EgressGrant | None = None
        self._key: paramiko.PKey | None = None
        self._start_lock = threading.Lock()
        self._live: set[str] = set()
        self.store = SnapshotStore(config.snapshot_dir)
        self._snap_lock = threading.Lock()
        self._snap_serial = 0
        #: shape digest → the thread making that snapshot in the background
        self._makers: dict[str, threading.Thread] = {}
        #: template guests being made (close() destroys them rather than wait)
        self._templates: set[Guest] = set()
        self._closing = threading.Event()
        self._qemu_version = ""
        self._log = _log.bind(worker=worker_name)
        with map_libvirt_errors(f"connecting to {config.libvirt_uri}"):
            self._conn = libvirt.open(config.libvirt_uri)
        if isolate:
            # The egress policy, and this worker's forwards and allowed networks, owned: they
            # are withdrawn by close() and lapse if this process dies (guest/grants.py).
            self._egress = EgressGrant(self.qemu_uid, self._forwards, self._networks).start()
        self._log.info(
            "hypervisor.ready",
            accel=self.accel.accel,
            reason=self.accel.reason,
            uri=config.libvirt_uri,
            isolation=isolate,
            forwards=[f.port for f in self._forwards],
            allow_networks=[str(n) for n in self._networks],
        )

    def accel_for(self, image: ImageInfo) -> AccelChoice:
        """The worker's accelerator, or TCG for a guest of another arch (arm64 on x86)."""
        return accel_for_guest(self.accel, libvirt_arch(image.arch), host_arch())

    @staticmethod
    def snapshots_unsupported(image: ImageInfo) -> str | None:
        """Why this image's guests are never saved and restored (None: they are): the
        aarch64 ``virt`` machine has no vmgenid (an ACPI device), so restored copies would
        share the template's RNG state. Its guests boot cold; its pool stays empty."""
        arch = libvirt_arch(image.arch)
        if arch != "x86_64":
            return f"no snapshots of {arch} guests (the virt machine has no vmgenid)"
        return None

    def ssh_key(self) -> paramiko.PKey:
        if self._key is None:
            self._key = load_private_key(self.config.ssh_key)
        return self._key

    # --- boot ---------------------------------------------------------------------------

    def _prepare_directory(
        self, name: str, image: ImageInfo, *, backing: Path, directory: Path | None = None
    ) -> Path:
        work_dir = self.config.work_dir if directory is None else directory.parent
        if not work_dir.exists():
            work_dir.mkdir(parents=True, mode=0o755)
        directory = work_dir / name if directory is None else directory
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(mode=0o750)
        for needed in (backing, image.kernel, image.initrd):
            if needed is not None and not _readable_by(needed, self.qemu_uid, self.qemu_gid):
                raise VMError(
                    f"{needed}: not readable by {self.config.qemu_user} (qemu runs as that user; "
                    "make the file world-readable and its directories world-executable)"
                )
        if not _readable_by(directory, self.qemu_uid, self.qemu_gid) and not _readable_by(
            work_dir, self.qemu_uid, self.qemu_gid
        ):
            raise VMError(f"vm.work-dir: {work_dir} is not reachable by {self.config.qemu_user}")
        overlay = directory / OVERLAY_NAME
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(backing),  # the image's disk, or a snapshot's frozen overlay
                str(overlay),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        os.chown(overlay, self.qemu_uid, self.qemu_gid)
        os.chown(directory, self.qemu_uid, self.qemu_gid)
        return directory

    def _ports_in_use(self) -> set[int]:
        ports: set[int] = set()
        with map_libvirt_errors("listing domains"):
            for dom in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(libvirt.libvirtError):
                    port = parse_hostfwd_port(dom.XMLDesc(0))
                    if port is not None:
                        ports.add(port)
        return ports

    def boot(self, image: ImageInfo, *, job_id: int, attempt: int) -> Guest:
        """Start a fresh guest for this job attempt on a new overlay; returns at once (the
        guest is booting or restoring: call ``wait_ready``). Raises VMError.

        With ``[vm] warm-start`` (the default) the guest is a copy of the image's snapshot.
        A missing, corrupt or failing snapshot means a cold boot, and a new snapshot is made
        in the background; ``Guest.start_note`` says which way it went and why."""
        if image.kernel is None:
            raise VMError(f"image {image.name} ({image.arch}) has no kernel for direct boot")
        name = domain_name(self.worker_name, job_id, attempt)
        # A domain of this very attempt (a worker restarted mid-job) goes first.
        self._destroy_by_name(name)
        if not self.config.warm_start:
            guest = self._start(name, image, job_id, attempt)
            guest.start_note = "cold boot ([vm] warm-start = no)"
            return guest
        unsupported = self.snapshots_unsupported(image)
        if unsupported:
            guest = self._start(name, image, job_id, attempt)
            guest.start_note = f"cold boot: {unsupported}"
            return guest
        snapshot, why = self.snapshot_for(image)
        if snapshot is not None:
            try:
                guest = self._start(name, image, job_id, attempt, template=snapshot)
                guest.start_path = "snapshot"
                guest.start_note = f"restored from snapshot {snapshot.directory.name}"
                return guest
            except VMError as exc:
                self._log.warning(
                    "guest.snapshot_failed", domain=name, error=str(exc), fallback="cold boot"
                )
                self.store.discard(snapshot.shape)
                note = f"restoring snapshot {snapshot.directory.name} failed ({exc})"
        else:
            note = str(why)
        if self.make_snapshot_soon(image):
            note += "; making one in the background"
        guest = self._start(name, image, job_id, attempt)
        guest.start_note = f"cold boot: {note}"
        return guest

    def restore_pooled(self, image: ImageInfo, serial: int) -> Guest | None:
        """A restored copy of the image's snapshot for the warm pool (``guest.pool``), or
        None when there is no intact snapshot yet (one is then made in the background).
        Pool guests are named ``<prefix>0-<serial>``: job 0 never exists. Raises VMError."""
        if image.kernel is None:
            raise VMError(f"image {image.name} ({image.arch}) has no kernel for direct boot")
        if self.snapshots_unsupported(image):
            return None  # its pool stays empty: jobs boot cold
        snapshot, why = self.snapshot_for(image)
        if snapshot is None:
            if why is not None and why.unusable:
                self.store.discard(self.shape_of(image))
            self.make_snapshot_soon(image)
            return None
        name = domain_name(self.worker_name, 0, serial)
        self._destroy_by_name(name)
        try:
            guest = self._start(name, image, 0, serial, template=snapshot)
        except VMError:
            self.store.discard(snapshot.shape)
            self.make_snapshot_soon(image)
            raise
        guest.start_path = "pool"
        return guest

    def _start(
        self,
        name: str,
        image: ImageInfo,
        job_id: int,
        attempt: int,
        *,
        template: Snapshot | None = None,
        directory: Path | None = None,
    ) -> Guest:
        assert image.kernel is not None
        log = (
            self._log.bind(job_id=job_id, attempt=attempt, domain=name)
            if job_id
            else self._log.bind(domain=name)  # a template or pool guest: no job yet
        )
        backing = template.frozen if template is not None else image.disk
        with map_libvirt_errors(f"{name}: preparing the overlay"):
            t0 = time.monotonic()
            directory = self._prepare_directory(name, image, backing=backing, directory=directory)
            overlay_s = time.monotonic() - t0
        last_error = ""
        try:
            for _ in range(PORT_ATTEMPTS):
                with self._start_lock:
                    port = pick_port(exclude=self._ports_in_use())
                    arch = libvirt_arch(image.arch)
                    spec = DomainSpec(
                        name=name,
                        accel=self.accel_for(image).accel,
                        arch=arch,
                        vcpus=self.config.vcpus,
                        memory_bytes=self.config.memory,
                        kernel=image.kernel,
                        initrd=image.initrd,
                        overlay=directory / OVERLAY_NAME,
                        ssh_port=port,
                        console_log=directory / CONSOLE_NAME,
                        qemu_uid=self.qemu_uid,
                        qemu_gid=self.qemu_gid,
                        cmdline=image.cmdline or default_cmdline(arch),
                        description=f"buildworker job {job_id} attempt {attempt} ({image.name})",
                        genid=str(uuid.uuid4()),
                        incoming=template is not None,
                    )
                    started = time.monotonic()
                    flags = libvirt.VIR_DOMAIN_START_PAUSED if template is not None else 0
                    try:
                        domain = self._conn.createXML(render_domain_xml(spec), flags)
                    except libvirt.libvirtError as exc:
                        last_error = exc.get_error_message() or str(exc)
                        if is_hostfwd_conflict(last_error):
                            log.warning("guest.port_taken", port=port)
                            continue
                        raise VMError(f"{name}: starting the domain: {last_error}") from exc
                    self._live.add(name)
                if template is not None:
                    try:
                        load_state(domain, directory, template.state, timeout=120)
                    except VMError:
                        self._destroy(domain, name, directory)
                        raise
                log.info(
                    "guest.booting",
                    port=port,
                    accel=spec.accel,
                    image=image.name,
                    arch=image.arch,
                    snapshot=template is not None,
                    overlay_s=round(overlay_s, 3),
                    create_s=round(time.monotonic() - started, 3),
                )
                return Guest(
                    ssh_key=self.ssh_key,
                    teardown=self._destroy,
                    domain=domain,
                    domain_name=name,
                    directory=directory,
                    image=image,
                    ssh_port=port,
                    started=started,
                    job_id=job_id,
                    attempt=attempt,
                    restored=template is not None,
                )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        shutil.rmtree(directory, ignore_errors=True)
        raise VMError(f"{name}: no free SSH port after {PORT_ATTEMPTS} tries: {last_error}")

    # --- snapshots ----------------------------------------------------------------------

    def shape_of(self, image: ImageInfo) -> Shape:
        """The machine shape a snapshot of ``image`` on this worker must match."""
        if not self._qemu_version:
            with map_libvirt_errors("asking libvirt for the QEMU version"):
                v = self._conn.getVersion()
            self._qemu_version = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
        with map_libvirt_errors(f"image {image.name}: reading its files"):
            return shape_of(
                image,
                vcpus=self.config.vcpus,
                memory=self.config.memory,
                accel=self.accel.accel,
                qemu_version=self._qemu_version,
                cmdline=image.cmdline or DEFAULT_CMDLINE,
            )

    def snapshot_for(self, image: ImageInfo) -> tuple[Snapshot, None] | tuple[None, Miss]:
        """(the image's intact snapshot for this shape, None), or (None, why there is none).
        An image whose files cannot be read, or of an arch never snapshotted, has no snapshot
        (``absent``): nothing to discard."""
        unsupported = self.snapshots_unsupported(image)
        if unsupported:
            return None, Miss("absent", unsupported)
        try:
            return self.store.get(self.shape_of(image))
        except VMError as exc:
            return None, Miss("absent", str(exc))

    def ensure_snapshot(self, image: ImageInfo) -> tuple[Snapshot, bool]:
        """The image's snapshot, made now if missing or broken (one cold boot and a save,
        ~10-20 s under TCG). Returns (snapshot, whether it was made). Raises VMError."""
        snapshot, why = self.snapshot_for(image)
        if snapshot is not None:
            return snapshot, False
        unsupported = self.snapshots_unsupported(image)
        if unsupported:
            raise VMError(f"image {image.name} ({image.arch}): {unsupported}")
        shape = self.shape_of(image)
        if why is not None and why.unusable:
            self._log.warning("guest.snapshot_discarded", image=image.name, reason=str(why))
            self.store.discard(shape)
        made = self._make_snapshot(image, shape)
        if made is None:  # another process made it meanwhile
            snapshot, why = self.store.get(shape)
            if snapshot is None:
                raise VMError(f"snapshot of {shape.label()}: {why}")
            return snapshot, False
        return made, True

    def make_snapshot_soon(self, image: ImageInfo) -> bool:
        """Make the image's snapshot in a background thread (one per shape at a time);
        False if one is already being made or the hypervisor is closing (or the image's
        guests are never snapshotted)."""
        if self.snapshots_unsupported(image):
            return False
        try:
            shape = self.shape_of(image)
        except VMError:
            return False
        with self._snap_lock:
            if self._closing.is_set():
                return False
            running = self._makers.get(shape.digest)
            if running is not None and running.is_alive():
                return True
            thread = threading.Thread(
                target=self._make_in_background,
                args=(image,),
                name=f"snapshot-{shape.dirname}",
                daemon=True,
            )
            self._makers[shape.digest] = thread
            thread.start()
        return True

    def prepare_snapshots_soon(self, images: Sequence[ImageInfo]) -> threading.Thread:
        """At worker start, in a background thread: check each image's snapshot (its SHA-256
        sums, ~0.5 s per file under load, else paid by the first job that restores it) and
        make the missing or broken ones, so the first job is a restore too. Returns the
        thread (the snapshots it starts: ``wait_snapshots``)."""

        def check() -> None:
            for image in images:
                if self._closing.is_set():
                    return
                # The edge of a thread: a failure here only leaves the first job to find out.
                try:
                    snapshot, why = self.snapshot_for(image)
                    making = snapshot is None and self.make_snapshot_soon(image)
                    self._log.info(
                        "guest.snapshot_checked",
                        image=image.name,
                        arch=image.arch,
                        ready=snapshot is not None,
                        making=making,
                        why=str(why) if why else None,
                    )
                except Exception as exc:
                    self._log.exception(
                        "guest.snapshot_check_failed", image=image.name, error=str(exc)
                    )

        thread = threading.Thread(target=check, name="snapshot-check", daemon=True)
        thread.start()
        return thread

    def _make_in_background(self, image: ImageInfo) -> None:
        try:
            self.ensure_snapshot(image)
        # The edge of a thread: whatever went wrong, the next boot falls back to a cold boot
        # and tries again; the traceback is logged here.
        except Exception as exc:
            if not self._closing.is_set():
                self._log.exception("guest.snapshot_failed", image=image.name, error=str(exc))

    def making_snapshots(self) -> bool:
        with self._snap_lock:
            return any(t.is_alive() for t in self._makers.values())

    def wait_snapshots(self, timeout: float) -> bool:
        """Wait for background snapshots to be saved; True if none is left running."""
        deadline = time.monotonic() + timeout
        with self._snap_lock:
            threads = list(self._makers.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not self.making_snapshots()

    def _make_snapshot(self, image: ImageInfo, shape: Shape) -> Snapshot | None:
        t0 = time.monotonic()
        with self.store.making(shape, self._closing) as scratch:
            if scratch is None:
                return None
            with self._snap_lock:
                self._snap_serial += 1
                name = f"{self.prefix}snap-{os.getpid()}-{self._snap_serial}"
            removed = self.store.prune(shape)
            if removed:
                self._log.info("guest.snapshots_pruned", removed=[p.name for p in removed])
            guest = self._start(name, image, 0, 0, directory=scratch / "vm")
            with self._snap_lock:
                self._templates.add(guest)
            try:
                if self._closing.is_set():
                    raise VMError("the worker is stopping")
                conn = guest.wait_ready(self.config.settle_timeout, cancel=self._closing)
                self._prepare_template(conn, image, name)
                conn.close()
                guest.forget_connections()
                # Let the guest's sshd for that login exit and the guest go idle before
                # saving, so copies do not all wake up in the middle of its teardown.
                if self._closing.wait(1.0):
                    raise VMError("the worker is stopping")
                # Paused first: a live save of a running TCG guest can catch its memory
                # mid-update (seen here: copies panicking in the timer code); a paused one
                # is saved in one pass. Copies start paused and load_state resumes them.
                with map_libvirt_errors(f"{name}: pausing the template"):
                    guest.domain.suspend()
                size = save_state(
                    guest.domain,
                    guest.directory,
                    scratch / STATE_NAME,
                    uid=self.qemu_uid,
                    gid=self.qemu_gid,
                    timeout=120,
                )
                with map_libvirt_errors(f"{name}: stopping the template"):
                    guest.domain.destroy()
                    os.rename(guest.directory / OVERLAY_NAME, scratch / FROZEN_NAME)
                    snapshot = self.store.publish(
                        shape,
                        scratch,
                        {"made_by": self.worker_name, "save_seconds": time.monotonic() - t0},
                    )
            finally:
                with self._snap_lock:
                    self._templates.discard(guest)
                with contextlib.suppress(VMError):
                    guest.destroy()
        self._log.info(
            "guest.snapshot_saved",
            image=image.name,
            arch=image.arch,
            snapshot=snapshot.directory.name,
            seconds=round(time.monotonic() - t0, 3),
            state_bytes=size,
        )
        return snapshot

    def _prepare_template(self, conn: GuestConnection, image: ImageInfo, name: str) -> None:
        """What every copy would otherwise do after its restore (copyprep): a failure only
        costs the copies time, so it is logged and the snapshot is still made."""
        output = bytearray()
        t0 = time.monotonic()
        status = conn.run(
            template_prep_command(image.login_user),
            pty=False,
            on_output=output.extend,
            timeout=TEMPLATE_PREP_TIMEOUT_S,
            cancel=self._closing,
        )
        said = bytes(output[-2000:]).decode(errors="replace").strip()
        if status != 0:
            self._log.warning(
                "guest.template_prep_incomplete", domain=name, status=status, output=said
            )
        else:
            self._log.info(
                "guest.template_prepared", domain=name, seconds=round(time.monotonic() - t0, 3)
            )

    # --- teardown -----------------------------------------------------------------------

    def _destroy(self, domain: libvirt.virDomain | None, name: str, directory: Path) -> None:
        try:
            if domain is not None:
                try:
                    domain.destroy()
                except libvirt.libvirtError as exc:
                    if not _is_gone(exc):
                        raise VMError(f"{name}: destroy: {exc.get_error_message()}") from exc
            else:
                self._destroy_by_name(name)
        finally:
            self._live.discard(name)
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise VMError(f"{name}: removing {directory}: {exc}") from exc

    def _destroy_by_name(self, name: str) -> bool:
        try:
            domain = self._conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if _is_gone(exc):
                return False
            raise VMError(f"{name}: lookup: {exc.get_error_message()}") from exc
        try:
            domain.destroy()
        except libvirt.libvirtError as exc:
            if not _is_gone(exc):
                raise VMError(f"{name}: destroy: {exc.get_error_message()}") from exc
        return True

    def reap_leftovers(self) -> list[str]:
        """Destroy this worker's domains and delete its overlay directories that a crashed
        run left behind (not the guests this instance is running). Returns their names."""
        reaped: list[str] = []
        with map_libvirt_errors("reaping leftovers"):
            for dom in self._conn.listAllDomains(0):
                name = dom.name()
                if name.startswith(self.prefix) and name not in self._live:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    reaped.append(name)
            work_dir = self.config.work_dir
            if work_dir.is_dir():
                for child in work_dir.iterdir():
                    if child.name.startswith(self.prefix) and child.name not in self._live:
                        shutil.rmtree(child, ignore_errors=True)
                        if child.name not in reaped:
                            reaped.append(child.name)
        if reaped:
            self._log.warning("hypervisor.reaped", domains=reaped)
        return reaped

    @property
    def egress(self) -> EgressGrant | None:
        """This worker's egress grants (None when built with ``isolate=False``)."""
        return self._egress

    def close(self) -> None:
        """Stop making snapshots (a half-made one is dropped; saved ones stay for the next
        start), withdraw this worker's forwards and allowed networks and close the libvirt
        connection."""
        self._closing.set()
        with self._snap_lock:
            templates = list(self._templates)
        for guest in templates:
            with contextlib.suppress(VMError):
                guest.destroy()
        self.wait_snapshots(30.0)
        if self._egress is not None:
            self._egress.close()
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()
