"""Which base image an OS name means, and making sure it is in the cache.

Names come from two places: recipes in ``guest-images/`` (built on first use,
under a file lock, verified by hash when used) and local images registered
with ``--kvm-image NAME=PATH`` (booted from their own bootloader).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import build
from .cache import file_lock, sha256_file, writable
from .errors import ImageError
from .recipes import list_recipes, load_recipe, recipes_dir
from .storage import inspect_image


@dataclass(frozen=True)
class BaseImage:
    """A disk to boot from; with a kernel, it is booted directly (no bootloader)."""

    name: str
    disk: Path
    format: str
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    family: str = "linux"


@dataclass(frozen=True)
class CachedImage:
    name: str
    path: Path
    size: int
    sha256: str
    stale: bool
    built_at: str


class ImageStore:
    """Resolves OS names to base images in one cache directory."""

    def __init__(self, cache_dir: Path, local_images: dict[str, Path] | None = None,
                 progress: Callable[[str], None] = lambda msg: None,
                 recipe_dir: Path | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.local_images = dict(local_images or {})
        self.progress = progress
        self.recipe_dir = recipe_dir or recipes_dir()
        self._verified: dict[str, BaseImage] = {}

    @property
    def images_dir(self) -> Path:
        return self.cache_dir / "images"

    def known_names(self) -> list[str]:
        return sorted(set(list_recipes(self.recipe_dir)) | set(self.local_images))

    def check_name(self, name: str) -> None:
        if name not in self.known_names():
            raise ImageError(f"unknown guest OS {name!r}; known: {', '.join(self.known_names())} "
                             "(add one with --kvm-image NAME=PATH)")

    def resolve(self, name: str, image: Path | None = None) -> BaseImage:
        """The base image for OS *name*; *image* (a local disk) overrides it."""
        if image is not None:
            return self._local(name, Path(image))
        if name in self.local_images:
            return self._local(name, self.local_images[name])
        self.check_name(name)
        return self.ensure_built(name)

    def _local(self, name: str, path: Path) -> BaseImage:
        key = f"local:{path}"
        if key not in self._verified:
            fmt = inspect_image(path)
            self._verified[key] = BaseImage(name=name, disk=path.resolve(), format=fmt)
        return self._verified[key]

    # -- recipe-built images ------------------------------------------------
    def ensure_built(self, name: str, *, force: bool = False) -> BaseImage:
        if name in self._verified and not force:
            return self._verified[name]
        recipe = load_recipe(name, self.recipe_dir)
        dest = self.images_dir / name
        manifest = self._manifest(dest)
        if force or manifest is None or manifest.get("recipe_digest") != recipe.digest:
            with writable(self.images_dir, f"locking the cache to build {name}"):
                self.images_dir.mkdir(parents=True, exist_ok=True)
            with file_lock(self.images_dir / f"{name}.lock",
                           on_wait=lambda: self.progress(f"waiting for another process building {name}")):
                manifest = self._manifest(dest)  # another worker may have built it meanwhile
                if force or manifest is None or manifest.get("recipe_digest") != recipe.digest:
                    why = ("rebuild requested" if force else "not cached" if manifest is None
                           else "recipe changed since it was built")
                    self.progress(f"building base image {name} ({why})")
                    with writable(self.images_dir, f"building image {name}"):
                        manifest = build.build_image(recipe, dest, self.progress)
        image = self._verify(name, dest, manifest)
        self._verified[name] = image
        return image

    @staticmethod
    def _manifest(dest: Path) -> dict | None:
        try:
            return json.loads((dest / build.MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def _verify(self, name: str, dest: Path, manifest: dict) -> BaseImage:
        for filename, expected in manifest["sha256"].items():
            path = dest / filename
            if not path.is_file():
                raise ImageError(f"cached image {name}: {path} is missing; rebuild it with "
                                 f"`pytest-kvm image build --force {name}`")
            if sha256_file(path) != expected:
                raise ImageError(f"cached image {name}: {path} changed since it was built "
                                 f"(sha256 mismatch); rebuild it with "
                                 f"`pytest-kvm image build --force {name}`")
        return BaseImage(name=name, disk=dest / build.DISK, format=manifest["format"],
                         kernel=dest / build.KERNEL, initrd=dest / build.INITRD,
                         cmdline=manifest["kernel_cmdline"], family=manifest["family"])

    def list_cached(self) -> list[CachedImage]:
        found = []
        if not self.images_dir.is_dir():
            return found
        for dest in sorted(p for p in self.images_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            manifest = self._manifest(dest)
            if manifest is None:
                continue
            try:
                digest = load_recipe(dest.name, self.recipe_dir).digest
            except ImageError:
                digest = None
            size = sum(p.stat().st_size for p in dest.iterdir() if p.is_file())
            found.append(CachedImage(name=dest.name, path=dest / build.DISK, size=size,
                                     sha256=manifest["sha256"][build.DISK],
                                     stale=digest is not None and digest != manifest.get("recipe_digest"),
                                     built_at=manifest.get("built_at", "?")))
        return found

    def remove(self, name: str) -> bool:
        dest = self.images_dir / name
        if not dest.exists():
            return False
        shutil.rmtree(dest)
        return True
