from pathlib import Path

import pytest

from pytest_kvm.config import DEFAULT_TB_CACHE_MIB, TCG_TIMEOUT_FACTOR, Settings, SettingsError


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTEST_KVM_CACHE_DIR", str(tmp_path))
    s = Settings.build()
    assert s.os_names == ("debian-12",) and s.default_os == "debian-12"
    assert s.cache_dir == tmp_path
    assert s.boot_timeout == 60 and s.memory_mib == 512 and TCG_TIMEOUT_FACTOR > 1
    assert s.cpus == 2 and Settings.build(cpus="4").cpus == 4


def test_images_and_duplicates():
    s = Settings.build(os_names=["a", "b", "a"], images=["win=/x/win.qcow2"])
    assert s.os_names == ("a", "b")
    assert s.local_images == {"win": Path("/x/win.qcow2")}


@pytest.mark.parametrize("kwargs, word", [
    ({"images": ["nopath"]}, "--kvm-image"),
    ({"images": ["=x"]}, "--kvm-image"),
    ({"keep": "sometimes"}, "--kvm-keep"),
    ({"accel": "xen"}, "--kvm-accel"),
    ({"boot_timeout": "soon"}, "kvm_boot_timeout"),
    ({"boot_timeout": "-1"}, "kvm_boot_timeout"),
    ({"memory_mib": "0"}, "kvm_memory_mib"),
    ({"cpus": "1.5"}, "kvm_cpus"),
    ({"cpus": "0"}, "kvm_cpus"),
    ({"mirror": "127.0.0.1:8000/m"}, "kvm_mirror"),
    ({"uri": "bogus://"}, "--kvm-uri .bogus://. is not a libvirt URI"),
])
def test_bad_values(kwargs, word):
    with pytest.raises(SettingsError, match=word):
        Settings.build(**kwargs)


def test_limits_scaled_under_tcg_and_say_where_from():
    s = Settings.build(boot_timeout="10", ssh_timeout="5", cloud_init_timeout="20")
    tcg = s.limits("tcg")
    assert tcg["boot"].seconds == 10 * TCG_TIMEOUT_FACTOR
    assert tcg["boot"].source == f"kvm_boot_timeout = 10 s x{TCG_TIMEOUT_FACTOR:g} under TCG"
    assert s.limits("kvm")["ssh"].seconds == 5 and s.limits("kvm")["cloud-init"].source == "kvm_cloud_init_timeout = 20 s"
    explicit = s.limits("tcg", boot_timeout=7)["boot"]
    assert explicit.seconds == 7 and "given to kvm.boot" in explicit.source


def test_mirror_and_catalogs():
    s = Settings.build(mirror="http://127.0.0.1:8000/mirror/", catalogs=["~/images.toml"])
    assert s.mirror == "http://127.0.0.1:8000/mirror"
    assert s.catalogs == (Path("~/images.toml").expanduser(),)


def test_snapshot_and_ahead_settings():
    s = Settings.build()
    assert s.snapshots == "on" and s.snapshot_max_bytes is None and s.prepare_ahead == 1
    s = Settings.build(snapshots="off", snapshot_max_gb="1.5", prepare_ahead="0")
    assert s.snapshots == "off" and s.snapshot_max_bytes == int(1.5 * 2**30) and s.prepare_ahead == 0
    assert Settings.build(snapshot_max_gb="0").snapshot_max_bytes == 0  # keep none but those in use
    with pytest.raises(SettingsError, match="kvm_snapshot_max_gb must be 0 or more"):
        Settings.build(snapshot_max_gb="-1")


def test_tb_cache_setting():
    assert Settings.build().tb_cache_mib == DEFAULT_TB_CACHE_MIB > 0
    assert Settings.build(tb_cache_mib="0").tb_cache_mib == 0  # QEMU's default
    assert Settings.build(tb_cache_mib="256").tb_cache_mib == 256
    with pytest.raises(SettingsError, match="kvm_tb_cache_mib must be a whole number"):
        Settings.build(tb_cache_mib="64M")


def test_network_mode():
    assert Settings.build().network == "user"  # today's behaviour: the host's loopback too
    assert Settings.build(network="isolated").network == "isolated"
    with pytest.raises(SettingsError, match="--kvm-network / kvm_network must be one of "
                                            "user, isolated, not 'none'"):
        Settings.build(network="none")


def test_ini_reaches_settings(pytester):
    pytester.makeini("[pytest]\nkvm_snapshots = off\nkvm_snapshot_max_gb = 2\nkvm_prepare_ahead = 3\n")
    pytester.makepyfile("""
        from pytest_kvm.plugin.stash import STATE_KEY

        def test_x(pytestconfig):
            s = pytestconfig.stash[STATE_KEY].settings
            assert (s.snapshots, s.snapshot_max_bytes, s.prepare_ahead) == ("off", 2 * 2**30, 3)
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
