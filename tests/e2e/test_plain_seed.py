"""The plain seed: a guest without user_data boots without cloud-init, and is the same guest
a cloud-init boot makes (user, sudo, pinned host key, hostname); with user_data, cloud-init
runs as before. See pytest_kvm/seed/plain.py."""
from pytest_kvm.seed import plain


def test_a_guest_without_user_data_boots_without_cloud_init(kvm):
    with kvm.boot("debian-12", reset="boot") as g:
        assert g.config.plain_seed
        assert g.cloud_init_status.startswith(plain.STATUS), g.cloud_init_status
        assert g.cloud_init_status.splitlines()[-1].split()[-1] in ("running", "degraded")
        assert g.run("cloud-init status").stdout.strip().endswith("disabled")
        assert plain.CMDLINE_FLAG in g.run("cat /proc/cmdline").stdout
        assert g.run("systemctl is-active pytest-kvm-seed.service").stdout.strip() == "active"
        # what the plugin's cloud-config would have made
        assert g.run("hostname").stdout.strip() == g.name
        assert g.run("getent hosts \"$(hostname)\"").stdout.split()[0] == "127.0.1.1"
        assert g.run("sudo -n true").ok
        assert g.run("sudo -n passwd --status pytest").stdout.split()[1] == "L"  # locked
        keys = g.run("ls /etc/ssh/ | grep ssh_host_").stdout.split()
        assert keys == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
        host_key = g.run("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
        assert host_key == g.host_public.split()[:2]  # the pinned key, from the seed
        mode = g.run("stat -c %a /etc/ssh/ssh_host_ed25519_key").stdout.strip()
        assert mode == "600"
        # the unit reads its seed every boot: a reboot comes back the same guest
        g.reboot()
        assert g.run("hostname").stdout.strip() == g.name
        assert g.run("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2] == host_key


def test_user_data_still_goes_through_cloud_init(kvm):
    mark = {"write_files": [{"path": "/etc/pytest-kvm-mark", "content": "cloud-init\n"}]}
    with kvm.boot("debian-12", reset="boot", user_data=mark) as g:
        assert not g.config.plain_seed
        assert "status: done" in g.cloud_init_status, g.cloud_init_status
        assert plain.CMDLINE_FLAG not in g.run("cat /proc/cmdline").stdout
        assert g.run("cat /etc/pytest-kvm-mark").stdout == "cloud-init\n"
        assert g.run("hostname").stdout.strip() == g.name
        assert g.run("sudo -n true").ok


def test_a_unique_clone_keeps_its_own_name_across_reboots(kvm):
    """The unit sets the seed's hostname at every boot, but not over a name the guest was
    given since (a unique clone's), as cloud-init's update_hostname does not either."""
    with kvm.boot("debian-12", reset="clone", unique=True) as g:
        assert g.cloned and g.config.plain_seed
        assert g.run("hostname").stdout.strip() == g.hostname
        for _ in range(2):
            g.reboot()
            assert g.run("hostname").stdout.strip() == g.hostname
            assert g.run("getent hosts \"$(hostname)\"").stdout.split()[0] == "127.0.1.1"
