"""Images for other CPU architectures: a recipe per architecture (its kernel package and
console from ``pytest_kvm.arches``), their names (``debian-12-arm64``), ``image build
--arch``, and the commands a foreign build runs (no binfmt_misc). Pure logic: a real
build is root's and the network's (``pytest-kvm image build debian-12 --arch arm64``)."""
import dataclasses
import os

import pytest

from pytest_kvm import cli
from pytest_kvm.arches import ARCHES, arch_of, image_name, split_image_name
from pytest_kvm.errors import ImageError
from pytest_kvm.images import build
from pytest_kvm.images.recipes import load_recipe
from pytest_kvm.images.store import ImageStore

ARM64, RISCV64 = ARCHES["arm64"], ARCHES["riscv64"]
#: the digests of the amd64 recipes before architectures existed: caches built then stay valid
AMD64_DIGESTS = {
    "debian-12": "15c26b5020eed93e502614213255813c25e1e420306f0acc8cc1079adbe9e34e",
    "debian-13": "8ab9a8c9cf18bbc02c95a1302558cf3f0b10ca4d70c65bafb49e9311f91abb48",
}


@pytest.mark.parametrize("name", sorted(AMD64_DIGESTS))
def test_the_amd64_recipe_is_unchanged(name):
    recipe = load_recipe(name)
    assert recipe.digest == AMD64_DIGESTS[name]
    assert recipe.arch == "amd64" and recipe.image == name
    assert "linux-image-cloud-amd64" in recipe.packages
    assert "console=ttyS0,115200" in recipe.kernel_cmdline


@pytest.mark.parametrize("name, arch", [("debian-12", ARM64), ("debian-13", ARM64),
                                        ("debian-13", RISCV64)])
def test_a_recipe_for_another_arch_has_its_kernel_and_console(name, arch):
    recipe = load_recipe(name, arch=arch)
    assert recipe.arch == arch.debian and recipe.image == f"{name}-{arch.debian}"
    assert arch.kernel_package in recipe.packages
    assert not any(p.startswith("linux-image-") and p != arch.kernel_package
                   for p in recipe.packages)
    assert f"console={arch.console},115200" in recipe.kernel_cmdline
    assert "{" not in recipe.kernel_cmdline and not any("{" in p for p in recipe.packages)
    # the rest is amd64's: the same user, seed configuration and packages
    amd64 = load_recipe(name)
    assert recipe.login_user == amd64.login_user and recipe.files.keys() == amd64.files.keys()
    assert {"python3-venv", "python3-pytest"} <= set(recipe.packages)
    assert recipe.digest not in (amd64.digest, load_recipe(name, arch=ARCHES["s390x"]).digest)


def test_a_suite_the_arch_lacks_is_one_error_naming_what_exists():
    with pytest.raises(ImageError) as info:
        load_recipe("debian-12", arch=RISCV64)
    message = str(info.value)
    assert "'debian-12' (bookworm) has no riscv64 image" in message
    assert "debian-13-riscv64" in message


def test_image_names_round_trip():
    assert image_name("debian-12", ARM64) == "debian-12-arm64"
    assert image_name("debian-12", ARCHES["amd64"]) == "debian-12"
    assert split_image_name("debian-13-riscv64") == ("debian-13", RISCV64)
    assert split_image_name("debian-13") == ("debian-13", ARCHES["amd64"])


def test_the_store_knows_an_arch_image_by_name(tmp_path):
    store = ImageStore(tmp_path)
    store.check_name("debian-12-arm64")  # no error: recipe debian-12 for arm64
    assert store.available("debian-13-riscv64")
    assert store._wanted("debian-12-arm64", "recipe") == load_recipe("debian-12", arch=ARM64).digest
    with pytest.raises(ImageError, match="has no riscv64 image"):
        store.check_name("debian-12-riscv64")


def test_building_an_arch_image_builds_its_recipe_for_that_arch(tmp_path, monkeypatch):
    built = []

    def fake_build(recipe, out, progress):
        built.append((recipe.name, recipe.arch))
        for name in (build.DISK, build.KERNEL, build.INITRD):
            (out / name).write_bytes(name.encode())
        return {"name": recipe.image, "family": recipe.family, "format": "qcow2",
                "kernel_cmdline": recipe.kernel_cmdline, "arch": recipe.arch,
                "sha256": {n: build.sha256_file(out / n)
                           for n in (build.DISK, build.KERNEL, build.INITRD)}}

    monkeypatch.setattr(build, "build_image", fake_build)
    with ImageStore(tmp_path) as store:
        image = store.ensure_built("debian-12-arm64")
    assert built == [("debian-12", "arm64")]
    assert image.name == "debian-12-arm64" and "console=ttyAMA0" in image.cmdline
    assert image.disk.parent.parent.name == "debian-12-arm64"


# -- the command line ------------------------------------------------------------------
def parse(*argv):
    return cli.build_parser().parse_args(["image", "build", *argv])


def test_arch_takes_either_spelling_and_repeats():
    args = parse("debian-12", "debian-13", "--arch", "aarch64", "--arch", "riscv64")
    assert args.arch == [ARM64, RISCV64]
    assert cli.build_names(args.names, args.arch) == [
        "debian-12-arm64", "debian-12-riscv64", "debian-13-arm64", "debian-13-riscv64"]
    assert cli.build_names(["debian-12"], [arch_of("arm64"), arch_of("aarch64")]) == ["debian-12-arm64"]


def test_without_arch_the_names_are_as_given():
    args = parse("debian-12", "debian-13-arm64")
    assert args.arch is None
    assert cli.build_names(args.names, args.arch) == ["debian-12", "debian-13-arm64"]


def test_an_unknown_arch_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        parse("debian-12", "--arch", "mips")
    assert info.value.code == 2
    assert "unknown architecture 'mips'" in capsys.readouterr().err


# -- what a foreign build runs -----------------------------------------------------------
def test_a_native_build_uses_chroot_and_one_debootstrap(tmp_path):
    recipe = load_recipe("debian-12")
    assert build.in_root(recipe, tmp_path) == ["chroot", str(tmp_path)]
    argv = build.debootstrap_argv(recipe, tmp_path, "http://m")
    assert "--foreign" not in argv and not any(a.startswith("--arch") for a in argv)


def test_a_foreign_build_runs_in_the_root_under_the_user_emulator(tmp_path):
    recipe = load_recipe("debian-12", arch=ARM64)
    argv = build.debootstrap_argv(recipe, tmp_path, "http://m")
    assert argv[:3] == ["debootstrap", "--arch=arm64", "--foreign"]
    assert argv[-3:] == ["bookworm", str(tmp_path), "http://m"]
    prefix = build.in_root(recipe, tmp_path)
    # a mount namespace of its own: debootstrap's mounts and unmounts stay there
    assert prefix[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert prefix[5:7] == ["sh", "-c"] and prefix[7] == build.IN_ROOT
    assert prefix[8:10] == ["sh", str(tmp_path)] and prefix[10].endswith("qemu-aarch64-static")
    assert "binfmt" not in build.IN_ROOT and "proot -q" in build.IN_ROOT
    assert build.HOST_MOUNT in build.IN_ROOT


def test_missing_foreign_tools_name_their_packages(monkeypatch):
    recipe = load_recipe("debian-13", arch=RISCV64)
    monkeypatch.setattr(build.shutil, "which",
                        lambda tool: None if tool in ("proot", "qemu-riscv64-static") else "/x")
    with pytest.raises(ImageError) as info:
        build._check_prerequisites(recipe)
    message = str(info.value)
    assert "'debian-13-riscv64'" in message and "apt install proot qemu-user-static" in message


def test_a_native_build_needs_no_emulator(monkeypatch):
    monkeypatch.setattr(build.shutil, "which", lambda tool: None if tool == "proot" else "/x")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    build._check_prerequisites(load_recipe("debian-12"))  # no error


def test_the_manifest_records_the_arch(tmp_path, monkeypatch):
    for name, body in {"debootstrap": 'root="${@: -2:1}"; mkdir -p "$root/boot" "$root/proc" && '
                                      'touch "$root/boot/vmlinuz-6.1" "$root/boot/initrd.img-6.1"',
                       "unshare": "exit 0", "chroot": "exit 0", "systemctl": "exit 0",
                       "mkfs.ext4": 'eval touch "\\${$(($#-1))}"',
                       "qemu-img": 'eval touch "\\${$#}"'}.items():
        (tmp_path / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(build, "_check_prerequisites", lambda recipe: None)
    out = tmp_path / "images" / "debian-12-arm64" / ".stage-x"
    out.mkdir(parents=True)
    recipe = dataclasses.replace(load_recipe("debian-12", arch=ARM64), commands=())
    manifest = build.build_image(recipe, out, lambda line: None)
    assert manifest["arch"] == "arm64" and manifest["name"] == "debian-12-arm64"
    log = (out.parent / build.BUILD_LOG).read_text()
    assert "--second-stage" in log and "--foreign" in log
