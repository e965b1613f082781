"""The embedded driver's qemu.conf: what the README's threat model says about QEMU's user; which URIs need QEMU installed here."""
from pytest_kvm.vm import embed, hypervisor


def settings(root):
    lines = (root / "etc" / "qemu.conf").read_text().splitlines()
    return dict(line.split(" = ", 1) for line in lines if " = " in line)


def test_as_root_qemu_runs_as_root_unconfined(tmp_path, monkeypatch):
    monkeypatch.setattr(embed.os, "geteuid", lambda: 0)
    embed.write_embed_config(tmp_path)
    conf = settings(tmp_path)
    assert conf["user"] == conf["group"] == '"root"'
    assert conf["security_driver"] == '"none"' and conf["dynamic_ownership"] == "0"


def test_as_a_user_qemu_runs_as_that_user(tmp_path, monkeypatch):
    monkeypatch.setattr(embed.os, "geteuid", lambda: 1000)
    embed.write_embed_config(tmp_path)
    conf = settings(tmp_path)
    assert "user" not in conf and "group" not in conf  # libvirt's default: the caller's own


def test_only_a_local_uri_needs_qemu_installed_here():
    """The watchdog of a --kvm-host run opens the host's URI: QEMU runs there, so a
    controller without qemu-system-x86_64 can still reap its guests."""
    assert hypervisor.runs_qemu_here(None)
    assert hypervisor.runs_qemu_here("qemu:///system")
    assert hypervisor.runs_qemu_here("qemu:///embed?root=/tmp/x")
    assert hypervisor.runs_qemu_here("qemu+unix:///system")
    assert not hypervisor.runs_qemu_here("qemu+ssh://ci@hv1/system?keyfile=/k")
    assert not hypervisor.runs_qemu_here("qemu+libssh://ci@hv1:2222/system")
    assert not hypervisor.runs_qemu_here("qemu+tcp://hv1/system")
