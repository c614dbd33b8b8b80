"""No libvirt, paramiko or OS exception escapes the guest adapters: each is mapped."""

from __future__ import annotations

import subprocess

import libvirt
import paramiko
import pytest

from buildworker.guest.errors import GuestError, GuestLayerError, VMError
from buildworker.guest.hypervisor import map_libvirt_errors
from buildworker.guest.ssh import map_paramiko_errors


@pytest.mark.parametrize(
    "exc",
    [
        paramiko.AuthenticationException("denied"),
        paramiko.SSHException("kex failed"),
        ConnectionResetError("reset"),
        TimeoutError("slow"),
        EOFError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_ssh_failure_becomes_a_guest_error_naming_the_action(exc: BaseException) -> None:
    with pytest.raises(GuestError, match="uploading x"), map_paramiko_errors("uploading x"):
        raise exc


@pytest.mark.parametrize(
    "exc",
    [
        libvirt.libvirtError("no connection"),
        PermissionError("denied"),
        subprocess.CalledProcessError(1, ["qemu-img"]),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_libvirt_failure_becomes_a_vm_error_naming_the_action(exc: BaseException) -> None:
    with pytest.raises(VMError, match="starting y"), map_libvirt_errors("starting y"):
        raise exc


def test_our_own_errors_pass_through_unchanged() -> None:
    with pytest.raises(VMError, match=r"^as is$"), map_libvirt_errors("z"):
        raise VMError("as is")
    assert issubclass(VMError, GuestLayerError) and issubclass(GuestError, GuestLayerError)


def test_a_real_unreachable_libvirt_is_a_vm_error() -> None:
    from buildworker.config import VmConfig
    from buildworker.guest.hypervisor import Hypervisor

    with pytest.raises(VMError, match="connecting to qemu:///nowhere"):
        Hypervisor(VmConfig(libvirt_uri="qemu:///nowhere"), worker_name="x", isolate=False)
