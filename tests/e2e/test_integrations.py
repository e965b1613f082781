"""testinfra and Ansible on a real guest, logging in with the pinned host key only."""
import os
import subprocess
from dataclasses import replace

import pytest

from pytest_kvm.transport import integrations
from pytest_kvm.keys import KeyPair, write_known_hosts


@pytest.fixture(scope="module")
def infra(shared_guest):
    """A testinfra host on the module's guest (what the guest_testinfra fixture gives)."""
    return shared_guest.testinfra()


def test_testinfra_file_package_command(infra, shared_guest):
    assert infra.file("/etc/os-release").contains("Debian")
    assert infra.package("openssh-server").is_installed
    assert infra.run("id -un").stdout.strip() == shared_guest.user
    config = (shared_guest.config.workdir / "ssh_config").read_text()
    assert "StrictHostKeyChecking yes" in config


def ansible(inventory, tmp_path):
    """``ansible -i INVENTORY all -m ping``. Host key checking is Ansible's default (on):
    the inventory's pinned known_hosts is what lets it in. No ControlMaster, so a run
    never reuses the connection (and host key check) of another."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_SSH_ARGS="-o ControlMaster=no", ANSIBLE_TIMEOUT="60")
    return subprocess.run(["ansible", "-i", str(inventory), "all", "-m", "ping"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def test_ansible_ping_through_the_inventory(kvm, shared_guest, tmp_path):
    inventory = kvm.inventory(tmp_path / "inv.yml")
    done = ansible(inventory, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pong" in done.stdout
    assert shared_guest.name in done.stdout


def test_ansible_refuses_another_host_key(shared_guest, tmp_path):
    wrong = write_known_hosts(tmp_path / "known_hosts", "127.0.0.1", shared_guest.port,
                              KeyPair.generate("not-the-guest").public_openssh)
    host = replace(integrations.inventory_host(shared_guest), known_hosts=wrong)
    inventory = integrations.write_host_inventory(tmp_path / "inv.yml", [host])
    done = ansible(inventory, tmp_path)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "UNREACHABLE" in output and "pong" not in output
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in output or "Host key verification failed" in output
