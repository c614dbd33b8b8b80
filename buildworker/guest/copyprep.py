"""What a snapshot's template does before it is saved, so that every copy wakes up cheaply
(pure: the shell text only; the hypervisor runs it).

A restored copy runs the template's processes from the moment of the save, so work done in
the template is work no copy repeats. Measured under TCG on a restored bookworm guest:

- **sshd listening by itself.** The image's sshd is socket-activated (systemd forks a unit
  and execs ``sshd -i`` per connection, which is what makes a cold boot's SSH early); each
  copy paid ~0.6 s for that before its banner. The template stops the socket and runs
  ``sshd -D`` as a transient unit instead (``-r``, no re-exec per connection, where this
  OpenSSH still has it): the banner comes ~0.2 s after the restore.
- **A root helper armed for the copy's own-machine step.** Every copy must set its clock
  and take a boot id of its own (vm.own_machine_command); through ``sudo`` that cost
  ~0.65 s per copy (sudo itself ~0.35 s). The template starts, as root, a one-shot helper
  blocked on a FIFO; a copy's first command writes the host's time into it and reads
  "ok" back, with no sudo and no login of root.

Either part may be missing (an ops team's image without ``buildworker-ssh.socket``, a
template whose preparation failed): the copy's own-machine command falls back to sudo, and
sshd is then whatever the image runs. The script's text is part of the snapshot's shape
(snapstore.shape_of), so changing it invalidates every snapshot made with the old one.
"""

from __future__ import annotations

import hashlib
import shlex

__all__ = [
    "HELPER_DIR",
    "OWN_MACHINE_TIMEOUT_S",
    "PREP_DIGEST",
    "TEMPLATE_PREP_TIMEOUT_S",
    "own_machine_command",
    "own_machine_preamble",
    "own_machine_sudo",
    "template_prep_command",
]

#: Where the armed helper's FIFOs live in the guest (tmpfs: gone on a cold boot).
HELPER_DIR = "/run/buildworker"
_IN = f"{HELPER_DIR}/own-machine.in"
_OUT = f"{HELPER_DIR}/own-machine.out"
#: How long the host waits for the armed helper's answer before falling back to sudo. It
#: only guards against a wedged guest (a helper that is armed answers in milliseconds), and
#: includes the exec launcher's own start when the step rides it: ~0.15 s of guest CPU,
#: measured at 4.7 s on a 2-core host at load 5 (when 5 s made every copy fall back).
OWN_MACHINE_TIMEOUT_S = 20
TEMPLATE_PREP_TIMEOUT_S = 60.0

#: The old way, and the fallback: everything as root through sudo, in one shell.
_OWN_MACHINE_ROOT = (
    'date -u -s "@$1" >/dev/null'
    " && cat /proc/sys/kernel/random/uuid > /run/buildworker-boot-id"
    " && mount --bind /run/buildworker-boot-id /proc/sys/kernel/random/boot_id"
)

#: The helper the template leaves blocked on its FIFO (bash, as root). Builtins wherever
#: they do (each exec costs tens of milliseconds under TCG); the time is checked to be a
#: number before ``date`` sees it.
_HELPER = f"""\
IFS= read -r t < {_IN} || exit 1
case $t in ''|*[!0-9.]*) echo "not a time: $t" > {_OUT}; exit 1 ;; esac
if ! date -u -s "@$t" >/dev/null; then echo "date failed" > {_OUT}; exit 1; fi
read -r u < /proc/sys/kernel/random/uuid
echo "$u" > /run/buildworker-boot-id
if ! mount --bind /run/buildworker-boot-id /proc/sys/kernel/random/boot_id; then
  echo "mount failed" > {_OUT}; exit 1
fi
echo ok > {_OUT}
"""

#: Run as root in the template. Exit 0: both parts armed; otherwise a message says which
#: part is missing (the snapshot is still good: copies take the slow paths).
_PREP_ROOT = f"""\
set -u
status=0
# 1. sshd by itself, if the image runs ours socket-activated.
if systemctl -q is-active buildworker-ssh.socket 2>/dev/null; then
  flag=
  /usr/sbin/sshd -t -r >/dev/null 2>&1 && flag=-r
  systemd-run --quiet --unit=buildworker-copy-sshd \\
    -p RuntimeDirectory=sshd -p RuntimeDirectoryPreserve=yes \\
    /bin/sh -c "systemctl stop buildworker-ssh.socket && exec /usr/sbin/sshd -D $flag"
  up=
  for _ in $(seq 100); do
    if ss -Hltn 'sport = :22' 2>/dev/null | grep -q .; then
      systemctl -q is-active buildworker-ssh.socket || {{ up=1; break; }}
    fi
    sleep 0.1
  done
  if [ -z "$up" ]; then
    echo "sshd did not take over port 22: the socket stays"
    systemctl stop buildworker-copy-sshd 2>/dev/null
    systemctl start buildworker-ssh.socket
    status=1
  fi
else
  echo "no buildworker-ssh.socket: sshd left as the image runs it"
  status=1
fi
# 2. The own-machine helper, blocked on its FIFO until a copy writes the time.
mkdir -p {HELPER_DIR} && chmod 755 {HELPER_DIR}
rm -f {_IN} {_OUT}
if mkfifo -m 600 {_IN} {_OUT} && chown "$1" {_IN} {_OUT} \\
  && systemd-run --quiet --unit=buildworker-own-machine /bin/bash -c {shlex.quote(_HELPER)}; then
  :
else
  echo "the own-machine helper did not start: copies use sudo"
  rm -f {_IN} {_OUT}
  status=1
fi
exit $status
"""


def template_prep_command(user: str) -> str:
    """The command the template runs (as the login user ``user``) before it is saved."""
    return f"sudo -n sh -c {shlex.quote(_PREP_ROOT)} prep {shlex.quote(user)}"


def _prep_digest() -> str:
    text = _PREP_ROOT + _HELPER + own_machine_command(0.0) + own_machine_preamble()
    text += own_machine_sudo(0.0)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def own_machine_command(now: float) -> str:
    """The command that makes a restored copy its own machine through the template's armed
    helper, given the host's time; it exits non-zero when there is no helper or it fails
    (then run :func:`own_machine_sudo` with the time of then).

    The copy woke up with the clock of the moment its snapshot was saved, and with the boot
    id every other copy has (journald, systemd and build tools key caches on it); the new
    VM generation id already made its kernel reseed the RNG. A bind mount is the only way
    to give a running kernel another boot id. Both FIFOs are opened read-write, so neither
    open blocks; the read has no timeout of its own, as the helper moves the clock under it
    (bash's ``read -t`` then expires at once): the caller runs this with a timeout of
    :data:`OWN_MACHINE_TIMEOUT_S` on the host's monotonic clock."""
    return (
        f"[ -p {_IN} ] && [ -p {_OUT} ] && exec 3<>{_IN} 4<>{_OUT}"
        f" && echo {now:.6f} >&3 && IFS= read -r bw_r <&4"
        ' && [ "$bw_r" = ok ]'
    )


def own_machine_preamble() -> str:
    """:func:`own_machine_command` as the primed exec launcher's preamble (primed.launchers):
    the host's time is the line the launcher read into ``bw_t``; the FIFOs are closed again
    before the launcher's script runs, so setup does not inherit them. Its status: 0 when
    the helper answered ``ok``."""
    return (
        f"bw_s=1; if [ -p {_IN} ] && [ -p {_OUT} ] && exec 3<>{_IN} 4<>{_OUT}; then"
        ' echo "$bw_t" >&3 && IFS= read -r bw_r <&4 && [ "$bw_r" = ok ] && bw_s=0;'
        ' exec 3>&- 4>&-; fi; unset bw_r; (exit "$bw_s")'
    )


def own_machine_sudo(now: float) -> str:
    """The same through sudo (a copy of a template whose preparation failed, an image
    without the helper): ~0.65 s under TCG, against ~0.3 s."""
    return f"sudo -n sh -c {shlex.quote(_OWN_MACHINE_ROOT)} own {now:.6f}"


#: What the snapshot's shape records of this preparation: its text's digest (constant text,
#: so computed once, at import).
PREP_DIGEST = _prep_digest()
