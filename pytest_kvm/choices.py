"""The values the plugin's choice options take (``--kvm-accel``, ``--kvm-reset``, ...),
declared once. This module imports nothing: the hooks offer these choices and the
settings check them without loading the modules that act on them."""

#: ``--kvm-accel``: KVM, TCG (software emulation), or KVM when it really works, else TCG
ACCEL_CHOICES = ("auto", "kvm", "tcg")
#: ``--kvm-reset``, ``reset=``: a warm clone of a golden guest, a cold boot, or a warm clone
#: reverted in place after its test and handed to the next one (see guest/revert.py)
RESET_CHOICES = ("clone", "boot", "revert")
#: ``--kvm-snapshots``: goldens kept across runs in the cache, or per session
SNAPSHOT_CHOICES = ("on", "off")
#: ``--kvm-keep``: which guests keep running after their test
KEEP_CHOICES = ("none", "failed", "all")
#: ``--kvm-artifacts-when``: which tests' guests' artifacts are collected
ARTIFACTS_WHEN_CHOICES = ("failed", "always")
#: ``--kvm-network``: how the user-mode NIC reaches beyond the guest. "user": slirp as it is
#: (the outside world, and the host's own 127.0.0.1 services as 10.0.2.2); "isolated":
#: slirp's ``restrict=on``, nothing beyond the guest (no outside, no host, no DNS), the host
#: forward still works. QEMU 7.2 has no option for "the outside but not the host"
#: (libslirp's ``disable_host_loopback`` is not exposed: ``-netdev
#: user,disable-host-loopback=on`` is an invalid parameter).
NETWORK_MODES = ("user", "isolated")
