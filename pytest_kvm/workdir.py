"""The files of a guest's work directory, which is also a golden's directory once the
guest is saved (see :mod:`pytest_kvm.guest.golden`)."""

SAVE_FILE = "memory.save"
HEAD_FILE = "memory.head"  # a remote golden's save image head (its XML: see vm.saveimage)
DISK_FILE = "disk.qcow2"
SEED_FILE = "seed.iso"
CONSOLE_FILE = "console.log"
LOGIN_KEY_FILE = "id_ed25519"
PASSWORD_FILE = "winrm-password"
META_FILE = "meta.json"  # written last: a golden directory without it is incomplete
KEPT_MARKER = "KEPT"  # a kept guest's: how to reach it (Guest.access); reapers leave it
