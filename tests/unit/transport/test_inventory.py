"""testinfra hosts, ssh_config files and Ansible inventories, on stand-in guests (no guest
boots): what is written, what OpenSSH and Ansible make of it, and where passwords go."""
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from pytest_kvm.transport import integrations
from pytest_kvm.errors import HypervisorError, KvmError
from pytest_kvm.transport.integrations import (IntegrationError, InventoryHost, MissingExtra, group_name,
                                     kept_host, render_inventory, testinfra_host,
                                     testinfra_hostspec, write_inventory, write_ssh_config)
from pytest_kvm.transport.winrm import Credentials

PASSWORD = "Pa:ss@w/rd?#%&x Y"  # every character a URL or YAML could trip on


def stand_in(tmp_path, *, name="pytest-kvm-1-ab12-1", os_name="debian-12", family="linux",
             transport="ssh", port=40022, proxy_command=None):
    """What integrations reads of a Guest, as plain attributes."""
    workdir = tmp_path / "runs" / "1-ab12" / name
    workdir.mkdir(parents=True)
    return SimpleNamespace(
        name=name, os=os_name, port=port, user="pytest", destroyed=False, kept=False,
        login_key_file=workdir.parent / "id_ed25519", known_hosts=workdir / "known_hosts",
        credentials=Credentials("pytest", PASSWORD) if transport == "winrm" else None,
        proxy_command=proxy_command,
        config=SimpleNamespace(family=SimpleNamespace(name=family, transport=transport),
                               workdir=workdir))


@pytest.fixture
def ssh_guest(tmp_path):
    return stand_in(tmp_path)


@pytest.fixture
def winrm_guest(tmp_path):
    return stand_in(tmp_path, name="pytest-kvm-1-ab12-2", os_name="windows-11", family="windows",
                    transport="winrm", port=45985)


def ssh_options(config, host):
    """What OpenSSH itself resolves from *config* for *host* (``ssh -G``: no connection)."""
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client")
    done = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True,
                          check=True)
    options = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        options.setdefault(key, value)
    return options


# -- ssh_config -------------------------------------------------------------------------------
def test_ssh_config_pins_the_host_key_and_the_login_key(ssh_guest, tmp_path):
    path = write_ssh_config(ssh_guest, tmp_path / "ssh_config")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [line.split(None, 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == ["Host", ssh_guest.name]
    assert dict(lines[1:]) == {
        "HostName": "127.0.0.1", "Port": "40022", "User": "pytest",
        "IdentityFile": str(ssh_guest.login_key_file), "IdentitiesOnly": "yes",
        "UserKnownHostsFile": str(ssh_guest.known_hosts), "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes", "BatchMode": "yes"}
    options = ssh_options(path, ssh_guest.name)
    assert (options["hostname"], options["port"], options["user"]) == ("127.0.0.1", "40022", "pytest")
    assert options["stricthostkeychecking"] == "true"
    assert options["userknownhostsfile"] == str(ssh_guest.known_hosts)
    assert options["globalknownhostsfile"] == "/dev/null"
    assert options["identityfile"] == str(ssh_guest.login_key_file)
    assert (options["identitiesonly"], options["batchmode"]) == ("yes", "yes")


def test_a_remote_hosts_guest_is_reached_through_the_host(tmp_path):
    """--kvm-host: the forward listens on the host's 127.0.0.1, so ssh_config and the
    inventory's SSH arguments carry the host's ProxyCommand, as OpenSSH reads it back."""
    proxy = ["ssh", "-p", "2222", "-o", "UserKnownHostsFile=/k/known hosts", "-W",
             "127.0.0.1:%p", "ci@hv1"]
    guest = stand_in(tmp_path, proxy_command=proxy)
    path = write_ssh_config(guest, tmp_path / "ssh_config")
    options = ssh_options(path, guest.name)
    assert shlex.split(options["proxycommand"].replace("%p", "40022")) == \
        proxy[:-2] + ["127.0.0.1:40022", "ci@hv1"]
    common = shlex.split(integrations.host_vars(integrations.inventory_host(guest))
                         ["ansible_ssh_common_args"])
    assert common[common.index("StrictHostKeyChecking=yes") - 1] == "-o"
    assert shlex.split(next(a for a in common if a.startswith("ProxyCommand="))
                       .removeprefix("ProxyCommand=")) == proxy
    local = integrations.host_vars(integrations.inventory_host(stand_in(tmp_path / "b")))
    assert "ProxyCommand" not in local["ansible_ssh_common_args"]


def test_ssh_config_quotes_spaces_and_percent_signs(tmp_path):
    guest = stand_in(tmp_path / "my cache %d")
    path = write_ssh_config(guest, tmp_path / "ssh_config")
    assert f'IdentityFile "{str(guest.login_key_file).replace("%", "%%")}"' in path.read_text()
    options = ssh_options(path, guest.name)
    assert options["userknownhostsfile"] == str(guest.known_hosts)  # %% expanded back to %
    # ssh -G shows IdentityFile before its % expansion, which happens when it connects
    assert options["identityfile"] == str(guest.login_key_file).replace("%", "%%")


def test_ssh_config_refuses_what_ssh_would_misread(tmp_path):
    guest = stand_in(tmp_path / 'a"b')
    with pytest.raises(IntegrationError, match="double quote"):
        write_ssh_config(guest, tmp_path / "ssh_config")


def test_a_windows_guest_has_no_ssh_config(winrm_guest, tmp_path):
    with pytest.raises(IntegrationError, match="winrm, not SSH"):
        write_ssh_config(winrm_guest, tmp_path / "ssh_config")


# -- testinfra ------------------------------------------------------------------------------------
def test_missing_testinfra_is_a_clear_error(ssh_guest, monkeypatch):
    monkeypatch.setitem(sys.modules, "testinfra", None)  # what `import` sees when it is missing
    with pytest.raises(MissingExtra) as info:
        testinfra_host(ssh_guest)
    assert isinstance(info.value, KvmError)
    assert "pip install 'pytest-kvm[testinfra]'" in str(info.value)


def test_testinfra_ssh_host_uses_the_written_config(ssh_guest):
    pytest.importorskip("testinfra")
    host = testinfra_host(ssh_guest)
    config = ssh_guest.config.workdir / "ssh_config"
    assert config.is_file()
    backend = host.backend
    assert (backend.get_connection_type(), backend.host.name) == ("ssh", ssh_guest.name)
    assert backend.ssh_config == str(config)
    command, arguments = backend._build_ssh_command("true")
    assert str(config) in arguments and ssh_guest.name in arguments
    assert "ControlMaster" not in " ".join(command)  # no ssh process outlives a command


def test_testinfra_on_a_destroyed_guest(ssh_guest):
    pytest.importorskip("testinfra")
    ssh_guest.destroyed = True
    with pytest.raises(HypervisorError, match="not running"):
        testinfra_host(ssh_guest)


def test_testinfra_winrm_url(winrm_guest):
    spec = testinfra_hostspec(winrm_guest)
    assert spec.startswith("winrm://pytest:") and spec.endswith(
        "@127.0.0.1:45985?no_ssl=true&no_verify_ssl=true")
    testinfra = pytest.importorskip("testinfra")
    host = testinfra_host(winrm_guest)  # builds the backend; connects only on a command
    args = host.backend.conn_args
    assert args["endpoint"] == "http://127.0.0.1:45985/wsman"
    assert (args["transport"], args["username"], args["password"]) == ("ntlm", "pytest", PASSWORD)
    assert args["server_cert_validation"] == "ignore"
    assert PASSWORD not in repr(host) and "Pa" not in repr(host)
    assert isinstance(host, testinfra.host.Host)


# -- Ansible inventories ------------------------------------------------------------------------
def test_group_names_are_valid_ansible_groups():
    assert group_name("debian-12") == "debian_12"
    assert group_name("ubuntu-24.04") == "ubuntu_24_04"
    assert group_name("9front") == "os_9front"
    assert group_name("all") == "os_all"
    assert group_name("pytest_kvm") == "os_pytest_kvm"
    assert group_name("Windows 11") == "Windows_11"


def test_inventory_of_an_ssh_guest(ssh_guest, tmp_path):
    path = write_inventory(tmp_path / "inv" / "inventory.yml", [ssh_guest])
    data = yaml.safe_load(path.read_text())
    children = data["all"]["children"]
    assert children["debian_12"] == {"hosts": {ssh_guest.name: None}}
    variables = children["pytest_kvm"]["hosts"][ssh_guest.name]
    assert variables == {
        "ansible_host": "127.0.0.1", "ansible_port": 40022, "ansible_user": "pytest",
        "ansible_ssh_private_key_file": str(ssh_guest.login_key_file),
        "ansible_ssh_common_args": variables["ansible_ssh_common_args"],
        "ansible_python_interpreter": "/usr/bin/python3"}
    assert shlex.split(variables["ansible_ssh_common_args"]) == [
        "-o", f"UserKnownHostsFile={ssh_guest.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"]
    assert not (path.parent / "host_vars").exists()


def test_inventory_paths_with_spaces_survive_ansibles_split(tmp_path):
    guest = stand_in(tmp_path / "my cache")
    data = render_inventory([integrations.inventory_host(guest)])
    args = data["all"]["children"]["pytest_kvm"]["hosts"][guest.name]["ansible_ssh_common_args"]
    assert f"UserKnownHostsFile={guest.known_hosts}" in shlex.split(args)


def test_inventory_of_a_winrm_guest_keeps_its_password_apart(winrm_guest, ssh_guest, tmp_path):
    path = write_inventory(tmp_path / "inventory.yml", [ssh_guest, winrm_guest])
    text = path.read_text()
    assert PASSWORD not in text and "ansible_password" not in text
    data = yaml.safe_load(text)
    assert set(data["all"]["children"]) == {"pytest_kvm", "debian_12", "windows_11"}
    assert data["all"]["children"]["pytest_kvm"]["hosts"][winrm_guest.name] == {
        "ansible_host": "127.0.0.1", "ansible_port": 45985, "ansible_user": "pytest",
        "ansible_connection": "winrm", "ansible_winrm_transport": "ntlm",
        "ansible_winrm_scheme": "http"}
    secret = tmp_path / "host_vars" / f"{winrm_guest.name}.yml"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert yaml.safe_load(secret.read_text()) == {"ansible_password": PASSWORD}
    assert PASSWORD not in repr(integrations.inventory_host(winrm_guest))


def test_inventory_of_no_guest_and_of_two_of_one_name(ssh_guest, tmp_path):
    assert render_inventory([]) == {"all": {"children": {"pytest_kvm": {"hosts": {}}}}}
    host = integrations.inventory_host(ssh_guest)
    with pytest.raises(IntegrationError, match="two guests"):
        render_inventory([host, host])


def test_ansible_reads_the_inventory_and_the_password_file(winrm_guest, ssh_guest, tmp_path):
    if shutil.which("ansible-inventory") is None:
        pytest.skip("ansible-core is not installed")
    path = write_inventory(tmp_path / "inventory.yml", [ssh_guest, winrm_guest])
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_NOCOLOR": "1"}
    done = subprocess.run(["ansible-inventory", "-i", str(path), "--list"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr  # e.g. an invalid group name
    listing = json.loads(done.stdout)
    assert sorted(listing["pytest_kvm"]["hosts"]) == sorted([ssh_guest.name, winrm_guest.name])
    assert listing["debian_12"]["hosts"] == [ssh_guest.name]
    hostvars = listing["_meta"]["hostvars"]
    assert hostvars[winrm_guest.name]["ansible_password"] == PASSWORD
    assert hostvars[ssh_guest.name]["ansible_port"] == 40022


# -- kept guests: pytest-kvm inventory ------------------------------------------------------------
def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def overlay_on(disk, backing):
    """A qcow2 *disk* whose backing file is *backing* (which need not be a real image)."""
    disk.parent.mkdir(parents=True, exist_ok=True)
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(backing), "-F", "qcow2", str(disk), "1M")


def keep_ssh_guest(cache, run, name, backing, join=" ".join):
    """What --kvm-keep leaves for an SSH guest: the KEPT file holds Guest.access()."""
    workdir = cache / "runs" / run / name
    overlay_on(workdir / "disk.qcow2", backing)
    argv = ["ssh", "-i", str(cache / "runs" / run / "id_ed25519"), "-p", "41022",
            "-o", f"UserKnownHostsFile={workdir / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "pytest@127.0.0.1"]
    (workdir / "KEPT").write_text(join(argv) + "\n")
    return workdir


def keep_winrm_guest(cache, run, name, backing):
    workdir = cache / "runs" / run / name
    overlay_on(workdir / "disk.qcow2", backing)
    (workdir / "winrm-password").write_text(PASSWORD)
    (workdir / "winrm-password").chmod(0o600)
    (workdir / "KEPT").write_text(f"winrm http://127.0.0.1:45986/wsman user pytest password in "
                                  f"{workdir / 'winrm-password'}\n")
    return workdir


@pytest.mark.parametrize("join", [" ".join, shlex.join], ids=["joined", "shell-quoted"])
def test_kept_host_reads_a_path_with_spaces(tmp_path, join):
    cache = tmp_path / "my cache"
    base = cache / "images" / "debian-13" / "base.qcow2"
    base.parent.mkdir(parents=True)
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    (base.parent / "manifest.json").write_text(json.dumps({"name": "debian-13", "family": "linux"}))
    workdir = keep_ssh_guest(cache, "9-cd", "pytest-kvm-9-cd-1", base, join)
    host = kept_host(workdir, (workdir / "KEPT").read_text())
    assert host == InventoryHost(name="pytest-kvm-9-cd-1", os="debian-13", family="linux",
                                 transport="ssh", port=41022, user="pytest",
                                 key_file=cache / "runs" / "9-cd" / "id_ed25519",
                                 known_hosts=workdir / "known_hosts")


def cli(*args, cache):
    return subprocess.run([sys.executable, "-m", "pytest_kvm.cli", "--cache-dir", str(cache), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_inventory_of_kept_guests(tmp_path):
    cache = tmp_path / "cache"
    # a cold-booted guest: overlay -> cached base image (manifest.json names it)
    image = cache / "images" / "debian-12" / "base.qcow2"
    image.parent.mkdir(parents=True)
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1M")
    (image.parent / "manifest.json").write_text(json.dumps({"name": "debian-12", "family": "linux"}))
    cold = keep_ssh_guest(cache, "100-aaaa", "pytest-kvm-100-aaaa-1", image)
    # a warm clone of Windows: overlay -> golden's frozen disk (meta.json names its OS)
    golden = cache / "snapshots" / "0123456789abcdef"
    overlay_on(golden / "disk.qcow2", tmp_path / "elsewhere" / "win.qcow2")
    (golden / "meta.json").write_text(json.dumps({"fields": {"os": "windows-11", "family": "windows"}}))
    keep_winrm_guest(cache, "200-bbbb", "pytest-kvm-200-bbbb-3", golden / "disk.qcow2")
    # not kept (its run is still going): not listed; a damaged KEPT file: skipped, said so
    (cache / "runs" / "200-bbbb" / "pytest-kvm-200-bbbb-1").mkdir()
    broken = cache / "runs" / "200-bbbb" / "pytest-kvm-200-bbbb-2"
    broken.mkdir()
    (broken / "KEPT").write_text("telnet somewhere\n")

    out = tmp_path / "out" / "kept.yml"
    out.parent.mkdir()
    done = cli("inventory", str(out), cache=cache)
    assert done.returncode == 0, done.stderr
    assert "2 kept guests in" in done.stdout
    assert "pytest-kvm-200-bbbb-2 skipped" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    children = yaml.safe_load(out.read_text())["all"]["children"]
    assert children["debian_12"]["hosts"] == {"pytest-kvm-100-aaaa-1": None}
    assert children["windows_11"]["hosts"] == {"pytest-kvm-200-bbbb-3": None}
    hosts = children["pytest_kvm"]["hosts"]
    assert set(hosts) == {"pytest-kvm-100-aaaa-1", "pytest-kvm-200-bbbb-3"}
    ssh = hosts["pytest-kvm-100-aaaa-1"]
    assert (ssh["ansible_port"], ssh["ansible_user"]) == (41022, "pytest")
    assert ssh["ansible_ssh_private_key_file"] == str(cache / "runs" / "100-aaaa" / "id_ed25519")
    assert f"UserKnownHostsFile={cold / 'known_hosts'}" in shlex.split(ssh["ansible_ssh_common_args"])
    assert ssh["ansible_python_interpreter"] == "/usr/bin/python3"
    win = hosts["pytest-kvm-200-bbbb-3"]
    assert (win["ansible_connection"], win["ansible_port"]) == ("winrm", 45986)
    secret = out.parent / "host_vars" / "pytest-kvm-200-bbbb-3.yml"
    assert yaml.safe_load(secret.read_text()) == {"ansible_password": PASSWORD}
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_cli_inventory_default_path_and_no_kept_guest(tmp_path):
    done = cli("inventory", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"0 kept guests in {tmp_path / 'inventory.yml'}" in done.stdout
    assert yaml.safe_load((tmp_path / "inventory.yml").read_text()) == {
        "all": {"children": {"pytest_kvm": {"hosts": {}}}}}


def test_cli_inventory_unwritable_path(tmp_path):
    (tmp_path / "file").write_text("")
    done = cli("inventory", str(tmp_path / "file" / "inv.yml"), cache=tmp_path)
    assert done.returncode == 1
    assert "cannot write the inventory" in done.stderr and "Traceback" not in done.stderr


def test_cli_inventory_makes_no_directories(tmp_path):
    path = tmp_path / "no" / "such" / "inv.yml"
    done = cli("inventory", str(path), cache=tmp_path)
    assert done.returncode == 1 and not (tmp_path / "no").exists()
    assert f"the directory {path.parent} does not exist" in done.stderr
