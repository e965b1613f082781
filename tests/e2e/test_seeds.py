"""Seed formats: the Debian guest's cloud-init reads an OpenStack ConfigDrive (config-2) too."""

MARK = {"write_files": [{"path": "/etc/pytest-kvm-seed", "content": "from config-2\n"}]}


def test_debian_boots_from_a_configdrive_seed(kvm):
    with kvm.boot("debian-12", seed="configdrive", reset="boot", user_data=MARK) as g:
        # the seed really is a config-2 drive, and cloud-init took it as one
        assert g.run("sudo -n blkid -s LABEL -o value /dev/vdb").stdout.strip() == "config-2"
        assert "ConfigDrive" in g.cloud_init_status, g.cloud_init_status
        # user data, hostname (meta_data.json) and keys took effect
        assert g.run("cat /etc/pytest-kvm-seed").stdout == "from config-2\n"
        assert g.run("hostname").stdout.strip() == g.name
        host_key = g.run("sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
        assert host_key == g.host_public.split()[:2]  # the pinned key, from the seed
        assert g.run("sudo -n true").ok  # the plugin's user and its sudo rule
