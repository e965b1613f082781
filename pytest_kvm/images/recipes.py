"""Image recipes: the data files in ``guest-images/<name>/recipe.toml``.

A recipe says how to build one base image offline. This module only reads and
checks them; :mod:`pytest_kvm.images.build` carries them out.
"""
from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..arches import ARCHES, Arch, image_name
from ..names import checked
from ..errors import ImageError

RECIPES_ENV = "PYTEST_KVM_RECIPES"


def recipes_dir() -> Path:
    """Where the recipes live: ``$PYTEST_KVM_RECIPES``, else the checkout's ``guest-images/``,
    else the copy installed inside the package."""
    if os.environ.get(RECIPES_ENV):
        return Path(os.environ[RECIPES_ENV])
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "guest-images", package / "guest-images"):
        if candidate.is_dir():
            return candidate
    return package.parent / "guest-images"


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    family: str
    builder: str
    suite: str
    mirror: str
    variant: str
    packages: tuple[str, ...]
    disk_size: str
    login_user: str
    kernel_cmdline: str
    #: the image has ``pytest-kvm-seed.service``, which boots without cloud-init from the
    #: seed's plain files when the kernel's command line asks (see seed/plain.py)
    plain_seed: bool = False
    files: dict[str, str] = field(default_factory=dict)
    mask_units: tuple[str, ...] = ()
    enable_units: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    truncate: tuple[str, ...] = ()
    commands: tuple[tuple[str, ...], ...] = ()
    digest: str = ""
    #: the Debian name of the CPU architecture it is built for (see :mod:`pytest_kvm.arches`)
    arch: str = "amd64"

    @property
    def image(self) -> str:
        """The image cache's name of this recipe on its architecture: ``debian-12-arm64``
        (``debian-12`` on amd64)."""
        return image_name(self.name, ARCHES[self.arch])

    def mirror_url(self) -> str:
        return os.environ.get("PYTEST_KVM_DEBIAN_MIRROR") or self.mirror


_REQUIRED = ("family", "builder", "suite", "mirror", "packages", "disk_size",
             "login_user", "kernel_cmdline")


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ImageError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ImageError(f"recipe {path} is not valid TOML: {exc}") from exc


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: what a recipe's ``packages``, ``kernel_cmdline`` and ``files`` name by these placeholders
#: comes from the architecture's entry in :mod:`pytest_kvm.arches` (declared once, there)
PLACEHOLDERS = ("kernel_package", "console", "nic_path")


def _for_arch(data: dict, arch: Arch) -> dict:
    """*data* with the placeholders filled in for *arch*; other architectures than amd64
    also record it (so amd64's digest is that of the recipe before architectures existed)."""
    values = {key: getattr(arch, key) for key in PLACEHOLDERS}

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        return text

    data = dict(data)
    data["packages"] = [fill(p) for p in data["packages"]]
    data["kernel_cmdline"] = fill(data["kernel_cmdline"])
    files = {rel: fill(text) for rel, text in data.get("files", {}).items()}
    if files:
        data["files"] = files
    if arch.initramfs_modules and "etc/initramfs-tools/modules" in files:
        files["etc/initramfs-tools/modules"] += "".join(f"{m}\n" for m in arch.initramfs_modules)
    if arch.debian != "amd64":
        data["arch"] = arch.debian
    return data


def _check_suite(name: str, data: dict, arch: Arch, directory: Path) -> None:
    if data["suite"] in arch.suites:
        return
    others = [r for r in list_recipes(directory) if r != name
              and _read_toml(directory / r / "recipe.toml").get("suite") in arch.suites]
    raise ImageError(
        f"recipe {name!r} ({data['suite']}) has no {arch.debian} image: Debian {data['suite']} "
        f"has no {arch.debian} port here; {arch.debian} images exist for "
        f"{', '.join(arch.suites)} ({', '.join(image_name(r, arch) for r in others) or 'no recipe'})")


def load_recipe(name: str, directory: Path | None = None, *, arch: Arch | None = None) -> Recipe:
    """Recipe *name* for *arch* (default amd64): its ``{kernel_package}`` and ``{console}``
    are the architecture's."""
    arch = arch or ARCHES["amd64"]
    directory = directory or recipes_dir()
    path = directory / checked("recipe", name) / "recipe.toml"
    if not path.is_file():
        known = ", ".join(list_recipes(directory)) or "none"
        raise ImageError(f"no recipe named {name!r} in {directory} (known: {known})")
    data = _read_toml(path)
    if "extends" in data:
        data = _merge(_read_toml((path.parent / data.pop("extends")).resolve()), data)
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ImageError(f"recipe {path} lacks {', '.join(missing)}")
    _check_suite(name, data, arch, directory)
    data = _for_arch(data, arch)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return Recipe(
        name=name,
        description=data.get("description", name),
        family=data["family"],
        builder=data["builder"],
        suite=data["suite"],
        mirror=data["mirror"],
        variant=data.get("variant", "minbase"),
        packages=tuple(data["packages"]),
        disk_size=data["disk_size"],
        login_user=data["login_user"],
        kernel_cmdline=data["kernel_cmdline"],
        plain_seed=bool(data.get("plain_seed", False)),
        files=dict(data.get("files", {})),
        mask_units=tuple(data.get("mask_units", ())),
        enable_units=tuple(data.get("enable_units", ())),
        remove=tuple(data.get("remove", ())),
        truncate=tuple(data.get("truncate", ())),
        commands=_commands(path, data.get("commands", [])),
        digest=digest,
        arch=arch.debian,
    )


def _commands(path: Path, value) -> tuple[tuple[str, ...], ...]:
    """``commands``: a list of argv lists, run in the root after it is configured."""
    if not isinstance(value, list) or not all(
            isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv) for argv in value):
        raise ImageError(f"recipe {path}: commands must be a list of argv lists of strings, "
                         f"e.g. [[\"update-initramfs\", \"-u\"]]")
    return tuple(tuple(argv) for argv in value)


def list_recipes(directory: Path | None = None) -> list[str]:
    directory = directory or recipes_dir()
    if not directory.is_dir():
        return []
    return sorted(p.parent.name for p in directory.glob("*/recipe.toml"))
