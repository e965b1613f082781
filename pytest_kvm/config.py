"""Settings: read from pytest's options and ini in one place, checked, frozen."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .choices import (ACCEL_CHOICES, ARTIFACTS_WHEN_CHOICES, KEEP_CHOICES, NETWORK_MODES,
                      RESET_CHOICES, SNAPSHOT_CHOICES)
from .arches import UnknownArch, arch_of, host_arch, image_name, split_image_name
from .files import default_cache_dir
from .hosts.uris import HostError, HostUri, check_uri, parse_host
from .names import NAME_PATTERN, NAME_RULE
from .spec import SpecError
from .waiting import Limit

DEFAULT_OS = "debian-12"
DEFAULT_MEMORY_MIB = 512
DEFAULT_CPUS = 2  # systemd and cloud-init start in parallel; TCG runs vCPUs on host threads
DEFAULT_BOOT_TIMEOUT = 60.0  # seconds under KVM: start -> SSH banner
DEFAULT_SSH_TIMEOUT = 30.0  # SSH banner (or a clone's restore) -> authenticated
DEFAULT_CLOUD_INIT_TIMEOUT = 60.0  # authenticated -> cloud-init done
TCG_TIMEOUT_FACTOR = 4.0  # software emulation is several times slower
DEFAULT_COMMAND_TIMEOUT = 600.0
DEFAULT_PREPARE_AHEAD = 1  # clones of the last golden used made ready before a test asks
#: TCG's translation cache per guest in MiB (QEMU's own default is 1 GiB, most of an idle
#: guest's resident memory); 0: QEMU's default. See docs/design/benchmarks.md
DEFAULT_TB_CACHE_MIB = 128


class SettingsError(ValueError):
    """An option or ini value that cannot be used; the message names it."""


@dataclass(frozen=True)
class Settings:
    os_names: tuple[str, ...] = (DEFAULT_OS,)
    accel: str = "auto"
    uri: str | None = None
    keep: str = "none"
    local_images: dict[str, Path] = field(default_factory=dict)
    cache_dir: Path = field(default_factory=default_cache_dir)
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    ssh_timeout: float = DEFAULT_SSH_TIMEOUT
    cloud_init_timeout: float = DEFAULT_CLOUD_INIT_TIMEOUT
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = DEFAULT_CPUS
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    reset: str = "clone"
    mirror: str | None = None  # catalog downloads come from MIRROR/HOST/PATH instead
    catalogs: tuple[Path, ...] = ()  # the user's catalog files, over the built-in one
    snapshots: str = "on"  # goldens kept across runs in CACHE/snapshots ("off": per session)
    snapshot_max_bytes: int | None = None  # least recently used snapshots go beyond it
    prepare_ahead: int = DEFAULT_PREPARE_AHEAD
    tb_cache_mib: int = DEFAULT_TB_CACHE_MIB  # under TCG; 0: QEMU's default
    artifacts_dir: Path | None = None  # where guests' logs and files go for failed tests
    artifacts_when: str = "failed"
    network: str = "user"  # the user-mode NIC's reach: "user" (host and outside) or "isolated"
    hosts: tuple[HostUri, ...] = ()  # remote hypervisor hosts (--kvm-host); empty: this machine
    #: the CPU architectures of the matrix (--kvm-arch, Debian's names); the first is the default
    archs: tuple[str, ...] = field(default_factory=lambda: (host_arch().debian,))

    @property
    def default_os(self) -> str:
        return self.os_names[0]

    def os_for(self, os: str | None, arch: str | None) -> str:
        """The image name a request for *os* on *arch* means (each default if None):
        ``debian-12`` on arm64 is ``debian-12-arm64``, on amd64 ``debian-12``. A name that
        already carries an architecture (``debian-12-arm64``) keeps it; *arch* must agree."""
        base, named = split_image_name(os or self.default_os)
        suffixed = named.debian != "amd64"
        wanted = arch_of(arch) if arch else named if suffixed else arch_of(self.archs[0])
        if suffixed and named != wanted:
            raise SpecError(f"os={os!r} is the {named.debian} image: it cannot run on "
                            f"arch={arch!r}")
        return image_name(base, wanted)

    def limits(self, accel: str, boot_timeout: float | None = None) -> dict[str, "Limit"]:
        """Each boot phase's time limit, scaled under TCG, saying where it came from."""
        factor = TCG_TIMEOUT_FACTOR if accel == "tcg" else 1.0
        scaled = f" x{factor:g} under TCG" if factor != 1 else ""

        def limit(ini: str, value: float) -> Limit:
            return Limit(value * factor, f"{ini} = {value:g} s{scaled}")

        return {
            "boot": (Limit(boot_timeout, f"boot_timeout={boot_timeout:g} given to kvm.boot")
                     if boot_timeout else limit("kvm_boot_timeout", self.boot_timeout)),
            "ssh": limit("kvm_ssh_timeout", self.ssh_timeout),
            "cloud-init": limit("kvm_cloud_init_timeout", self.cloud_init_timeout),
        }

    @classmethod
    def from_pytest_config(cls, config) -> "Settings":
        opt = config.option
        os_names = tuple(opt.kvm_os or ()) or tuple(config.getini("kvm_os").split()) or (DEFAULT_OS,)
        cache_dir = opt.kvm_cache_dir or config.getini("kvm_cache_dir") or None
        return cls.build(
            os_names=os_names, accel=opt.kvm_accel, uri=opt.kvm_uri, keep=opt.kvm_keep,
            images=opt.kvm_image or (), cache_dir=cache_dir,
            boot_timeout=config.getini("kvm_boot_timeout"), ssh_timeout=config.getini("kvm_ssh_timeout"),
            cloud_init_timeout=config.getini("kvm_cloud_init_timeout"),
            memory_mib=config.getini("kvm_memory_mib"), cpus=config.getini("kvm_cpus"),
            command_timeout=config.getini("kvm_command_timeout"),
            reset=opt.kvm_reset or config.getini("kvm_reset") or "clone",
            mirror=opt.kvm_mirror or config.getini("kvm_mirror") or None,
            catalogs=config.getini("kvm_catalog"),
            snapshots=opt.kvm_snapshots or config.getini("kvm_snapshots") or "on",
            snapshot_max_gb=config.getini("kvm_snapshot_max_gb"),
            prepare_ahead=config.getini("kvm_prepare_ahead"),
            tb_cache_mib=config.getini("kvm_tb_cache_mib"),
            artifacts_dir=_relative_to(opt.kvm_artifacts, config.invocation_params.dir)
            or _relative_to(config.getini("kvm_artifacts"), config.rootpath),
            artifacts_when=opt.kvm_artifacts_when or "failed",
            network=opt.kvm_network or config.getini("kvm_network") or "user",
            hosts=opt.kvm_host or config.getini("kvm_hosts"),
            archs=tuple(opt.kvm_arch or ()) or tuple(config.getini("kvm_arch").split()))

    @classmethod
    def build(cls, *, os_names=(DEFAULT_OS,), accel="auto", uri=None, keep="none", images=(),
              cache_dir=None, boot_timeout=None, ssh_timeout=None, cloud_init_timeout=None,
              memory_mib=None, cpus=None, command_timeout=None,
              reset="clone", mirror=None, catalogs=(), snapshots="on", snapshot_max_gb=None,
              prepare_ahead=None, tb_cache_mib=None, artifacts_dir=None, artifacts_when="failed",
              network="user", hosts=(), archs=()) -> "Settings":
        if accel not in ACCEL_CHOICES:
            raise SettingsError(f"--kvm-accel must be one of {', '.join(ACCEL_CHOICES)}, not {accel!r}")
        if keep not in KEEP_CHOICES:
            raise SettingsError(f"--kvm-keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
        if reset not in RESET_CHOICES:
            raise SettingsError(f"--kvm-reset / kvm_reset must be one of {', '.join(RESET_CHOICES)}, "
                                f"not {reset!r}")
        if snapshots not in SNAPSHOT_CHOICES:
            raise SettingsError(f"--kvm-snapshots / kvm_snapshots must be one of "
                                f"{', '.join(SNAPSHOT_CHOICES)}, not {snapshots!r}")
        if artifacts_when not in ARTIFACTS_WHEN_CHOICES:
            raise SettingsError(f"--kvm-artifacts-when must be one of "
                                f"{', '.join(ARTIFACTS_WHEN_CHOICES)}, not {artifacts_when!r}")
        if network not in NETWORK_MODES:
            raise SettingsError(f"--kvm-network / kvm_network must be one of "
                                f"{', '.join(NETWORK_MODES)}, not {network!r}")
        try:
            parsed_hosts = tuple(parse_host(text) for text in hosts if text.strip())
            uri = check_uri(uri) if uri else None
        except HostError as exc:
            raise SettingsError(str(exc)) from None
        if parsed_hosts and uri:
            raise SettingsError("--kvm-uri and --kvm-host do not mix: --kvm-host names the "
                                "libvirt URIs of the remote hosts")
        try:
            archs = tuple(dict.fromkeys(arch_of(a).debian for a in archs)) \
                or (host_arch().debian,)
        except UnknownArch as exc:
            raise SettingsError(f"--kvm-arch / kvm_arch: {exc}") from None
        local_images = {}
        for item in images:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise SettingsError(f"--kvm-image must be NAME=PATH, not {item!r}")
            if not NAME_PATTERN.match(name):
                raise SettingsError(f"--kvm-image {item!r}: the name must be {NAME_RULE}")
            local_images[name] = Path(path).expanduser()
        return cls(
            os_names=tuple(dict.fromkeys(os_names)),
            accel=accel, uri=uri or None, keep=keep, local_images=local_images,
            cache_dir=Path(cache_dir).expanduser() if cache_dir else default_cache_dir(),
            boot_timeout=_positive("kvm_boot_timeout", boot_timeout, DEFAULT_BOOT_TIMEOUT),
            ssh_timeout=_positive("kvm_ssh_timeout", ssh_timeout, DEFAULT_SSH_TIMEOUT),
            cloud_init_timeout=_positive("kvm_cloud_init_timeout", cloud_init_timeout,
                                         DEFAULT_CLOUD_INIT_TIMEOUT),
            memory_mib=int(_positive("kvm_memory_mib", memory_mib, DEFAULT_MEMORY_MIB)),
            cpus=_whole("kvm_cpus", cpus, DEFAULT_CPUS),
            command_timeout=_positive("kvm_command_timeout", command_timeout, DEFAULT_COMMAND_TIMEOUT),
            reset=reset,
            mirror=_url("--kvm-mirror / kvm_mirror", mirror),
            catalogs=tuple(Path(p).expanduser() for p in catalogs),
            snapshots=snapshots,
            snapshot_max_bytes=(None if snapshot_max_gb in (None, "") else
                                int(_not_negative("kvm_snapshot_max_gb", snapshot_max_gb) * 2**30)),
            prepare_ahead=_count("kvm_prepare_ahead", prepare_ahead, DEFAULT_PREPARE_AHEAD),
            tb_cache_mib=_count("kvm_tb_cache_mib", tb_cache_mib, DEFAULT_TB_CACHE_MIB),
            artifacts_dir=Path(artifacts_dir).expanduser() if artifacts_dir else None,
            artifacts_when=artifacts_when,
            network=network,
            hosts=parsed_hosts,
            archs=archs,
        )


def _relative_to(value: str | None, base: Path) -> Path | None:
    """A path option: relative to *base* (where pytest started, or the ini file's directory)."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _positive(name: str, value, default: float) -> float:
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a number, not {value!r}") from None
    if number <= 0:
        raise SettingsError(f"{name} must be positive, not {value!r}")
    return number


def _whole(name: str, value, default: int) -> int:
    number = _positive(name, value, default)
    if number != int(number):
        raise SettingsError(f"{name} must be a whole number, not {value!r}")
    return int(number)


def _not_negative(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise SettingsError(f"{name} must be 0 or more, not {value!r}")
    return number


def _count(name: str, value, default: int) -> int:
    """A whole number >= 0."""
    if value in (None, ""):
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {value!r}") from None
    if number < 0:
        raise SettingsError(f"{name} must be 0 or more, not {value!r}")
    return number


def _url(name: str, value: str | None) -> str | None:
    if not value:
        return None
    if not value.startswith(("http://", "https://", "file://")):
        raise SettingsError(f"{name} must be an http://, https:// or file:// URL, not {value!r}")
    return value.rstrip("/")
