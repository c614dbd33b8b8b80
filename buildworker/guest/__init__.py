"""Guests: base images, libvirt VMs on copy-on-write overlays, the SSH layer, isolation.

Modules: ``images`` (catalogue of built images), ``accel`` (KVM or TCG), ``domain`` (libvirt
domain XML, pure), ``ports`` (loopback SSH ports), ``hypervisor`` (libvirt provisioning),
``vm`` (a running guest: settle, console, destroy), ``ssh`` (paramiko connection per guest),
``settle`` (probe schedule, pure), ``isolation`` (nftables rules that keep guests off the
host's services), ``snapshot`` (save and restore a settled guest's memory over QEMU
migration), ``errors``.
"""
