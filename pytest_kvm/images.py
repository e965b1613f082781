"""Which base image an OS name means, and making sure it is in the cache.

Names come from three places: recipes in ``guest-images/`` (built on first use),
the image catalog (``guest-images/catalog.toml`` plus the user's catalog files:
vendor cloud images, downloaded and verified on first use), and local images
registered with ``--kvm-image NAME=PATH``. Built and downloaded images live in
``<cache>/images/<name>/`` with a ``manifest.json``; they are made under a file
lock shared by parallel workers and checked by hash once per session.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import build
from .cache import file_lock, sha256_file, writable
from .catalog import CatalogEntry, builtin_catalog, load_catalog
from .download import ProgressLine, RetryPolicy, fetch
from .names import checked
from .errors import ImageError
from .families import family_for_name
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
    firmware: str | None = None  # None: the family's default
    login_user: str | None = None  # None: the plugin's own user (recipe images)
    min_memory_mib: int | None = None
    digest: str | None = None  # a hash of the verified files' sha256s; None: not hashed (local)


@dataclass(frozen=True)
class CachedImage:
    name: str
    path: Path
    size: int
    sha256: str
    stale: bool
    built_at: str
    kind: str = "recipe"  # "recipe" (built) or "catalog" (downloaded)


class ImageStore:
    """Resolves OS names to base images in one cache directory."""

    def __init__(self, cache_dir: Path, local_images: dict[str, Path] | None = None,
                 progress: Callable[[str], None] = lambda msg: None,
                 recipe_dir: Path | None = None, *, mirror: str | None = None,
                 catalogs: Sequence[Path] = (), retry: RetryPolicy | None = None) -> None:
        """*mirror*: URL prefix that catalog downloads are fetched from instead of the
        vendor (see :func:`pytest_kvm.catalog.mirror_url`); *catalogs*: the user's
        catalog files, read after the built-in one (a later entry replaces an earlier
        one of the same name); *retry*: download retries and timeouts."""
        self.cache_dir = Path(cache_dir)
        self.local_images = dict(local_images or {})
        self.progress = progress
        self.recipe_dir = recipe_dir or recipes_dir()
        self.mirror = mirror or None
        self.catalogs = tuple(Path(p) for p in catalogs)
        self.retry = retry or RetryPolicy()
        self._catalog: dict[str, CatalogEntry] | None = None
        self._verified: dict[str, BaseImage] = {}

    @property
    def images_dir(self) -> Path:
        return self.cache_dir / "images"

    @property
    def catalog(self) -> dict[str, CatalogEntry]:
        """The catalog entries by name: the built-in catalog, then the user's files."""
        if self._catalog is None:
            builtin = builtin_catalog(self.recipe_dir)
            catalog = load_catalog(([builtin] if builtin.is_file() else []) + list(self.catalogs))
            clash = sorted(set(catalog) & set(list_recipes(self.recipe_dir)))
            if clash:
                raise ImageError(f"image catalog {catalog[clash[0]].source}: entry {clash[0]!r} has "
                                 f"the name of an image recipe in {self.recipe_dir}; rename the entry")
            self._catalog = catalog
        return self._catalog

    def known_names(self) -> list[str]:
        return sorted(set(list_recipes(self.recipe_dir)) | set(self.local_images) | set(self.catalog))

    def check_name(self, name: str) -> None:
        if name not in self.known_names():
            own = sorted(set(list_recipes(self.recipe_dir)) | set(self.local_images))
            raise ImageError(f"unknown guest OS {name!r}; known: {', '.join(own)}; "
                             f"downloadable: {', '.join(sorted(self.catalog))} "
                             "(add one with --kvm-image NAME=PATH or an image catalog entry)")

    def resolve(self, name: str, image: Path | None = None) -> BaseImage:
        """The base image for OS *name*; *image* (a local disk) overrides it."""
        if image is not None:
            return self._local(name, Path(image))
        if name in self.local_images:
            return self._local(name, self.local_images[name])
        self.check_name(name)
        if name in self.catalog:
            return self.ensure_downloaded(name)
        return self.ensure_built(name)

    def available(self, name: str) -> bool:
        """Whether *name* can be booted without downloading: a local image, a recipe (built
        offline) or a catalog entry whose current download is cached."""
        if name in self.local_images or name in list_recipes(self.recipe_dir):
            return True
        entry = self.catalog.get(name)
        return entry is not None and self._current(self._manifest(self.images_dir / name), entry)

    def ensure(self, name: str, *, force: bool = False) -> BaseImage:
        """Build (recipe) or download (catalog entry) *name* into the cache."""
        if name in self.catalog:
            return self.ensure_downloaded(name, force=force)
        return self.ensure_built(name, force=force)

    def _local(self, name: str, path: Path) -> BaseImage:
        key = f"local:{path}"
        if key not in self._verified:
            fmt = inspect_image(path)
            self._verified[key] = BaseImage(name=name, disk=path.resolve(), format=fmt,
                                            family=family_for_name(name))
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
        self._check_files(name, dest, manifest, f"rebuild it with `pytest-kvm image build --force {name}`")
        image = BaseImage(name=name, disk=dest / build.DISK, format=manifest["format"],
                          kernel=dest / build.KERNEL, initrd=dest / build.INITRD,
                          cmdline=manifest["kernel_cmdline"], family=manifest["family"],
                          digest=_files_digest(manifest))
        self._verified[name] = image
        return image

    @staticmethod
    def _manifest(dest: Path) -> dict | None:
        try:
            return json.loads((dest / build.MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _check_files(name: str, dest: Path, manifest: dict, fix: str) -> None:
        """Every file the manifest lists exists and still has its recorded sha256."""
        verb = "downloaded" if manifest.get("source") == "catalog" else "built"
        for filename, expected in manifest["sha256"].items():
            path = dest / filename
            if not path.is_file():
                raise ImageError(f"cached image {name}: {path} is missing; {fix}")
            if sha256_file(path) != expected:
                raise ImageError(f"cached image {name}: {path} changed since it was {verb} "
                                 f"(sha256 mismatch); {fix}")

    # -- catalog (downloaded) images ------------------------------------------------
    def ensure_downloaded(self, name: str, *, force: bool = False) -> BaseImage:
        """Download catalog entry *name* unless a current copy is cached; verify it once."""
        if name in self._verified and not force:
            return self._verified[name]
        entry = self.catalog.get(name)
        if entry is None:
            raise ImageError(f"no catalog entry named {name!r} "
                             f"(known: {', '.join(sorted(self.catalog)) or 'none'})")
        dest = self.images_dir / name
        manifest = self._manifest(dest)
        fresh = False
        if force or not self._current(manifest, entry):
            with writable(self.images_dir, f"locking the cache to download {name}"):
                self.images_dir.mkdir(parents=True, exist_ok=True)
            with file_lock(self.images_dir / f"{name}.lock",
                           on_wait=lambda: self.progress(f"waiting for another process downloading {name}")):
                manifest = self._manifest(dest)  # another worker may have fetched it meanwhile
                if force or not self._current(manifest, entry):
                    why = ("download requested" if force else "not cached" if manifest is None
                           else "catalog entry changed since it was downloaded")
                    self.progress(f"downloading base image {name} ({why}) from "
                                  f"{entry.with_mirror(self.mirror).url}")
                    with writable(self.images_dir, f"downloading image {name}"):
                        manifest = self._download(entry, dest)
                    fresh = True
        if not fresh:  # just hashed while downloading; otherwise check once per session
            self._check_files(name, dest, manifest,
                              f"download it again with `pytest-kvm image fetch --force {name}`")
        image = BaseImage(name=name, disk=dest / manifest["disk"], format=manifest["format"],
                          family=entry.family, firmware=entry.firmware,
                          login_user=entry.login_user, min_memory_mib=entry.min_memory_mib,
                          digest=_files_digest(manifest))
        self._verified[name] = image
        return image

    @staticmethod
    def _current(manifest: dict | None, entry: CatalogEntry) -> bool:
        return (manifest is not None and manifest.get("source") == "catalog"
                and manifest.get("entry_digest") == entry.digest)

    def _download(self, entry: CatalogEntry, dest: Path) -> dict:
        """Fetch *entry* into *dest* (we hold its lock); the copy cached so far stays
        until the new one is verified, and the manifest is written last."""
        dest.mkdir(parents=True, exist_ok=True)
        incoming = dest / f"incoming.{entry.format}"
        incoming.unlink(missing_ok=True)  # left by a killed run (we hold the lock)
        result = fetch(entry, incoming, mirror=self.mirror, policy=self.retry, log=self.progress,
                       progress=ProgressLine(f"downloading {entry.name}", self.progress))
        try:
            found = inspect_image(incoming)
            if found != entry.format:
                raise ImageError(f"image catalog {entry.source}: entry {entry.name!r} says format "
                                 f"{entry.format!r} but {result.url} is {found!r}; fix the entry")
        except ImageError:
            incoming.unlink(missing_ok=True)
            raise
        disk = dest / f"disk.{entry.format}"
        # The manifest goes first, so that a crash below leaves "not cached", never a
        # manifest next to a disk it does not describe.
        (dest / build.MANIFEST).unlink(missing_ok=True)
        for old in {"disk.qcow2", "disk.raw", build.DISK, build.KERNEL, build.INITRD} - {disk.name}:
            (dest / old).unlink(missing_ok=True)
        os.replace(incoming, disk)  # a guest still running on the old disk keeps its inode
        sha256 = result.sha256 or sha256_file(disk)
        if entry.trust_on_first_use and result.source_digest:
            algorithm, value = result.source_digest
            self.progress(f"warning: {entry.name}: its vendor publishes no checksum, so this first "
                          f"download is trusted as it is ({algorithm} {value}); pin it with "
                          f'{algorithm} = "{value}" in a catalog file of yours')
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {
            "name": entry.name, "source": "catalog", "entry_digest": entry.digest,
            "url": entry.url, "downloaded_from": result.url, "verified_by": entry.verification,
            "download_digest": dict([result.source_digest]) if result.source_digest else {},
            "disk": disk.name, "format": entry.format, "family": entry.family,
            "firmware": entry.firmware, "login_user": entry.login_user,
            "min_memory_mib": entry.min_memory_mib, "built_at": now,
            "sha256": {disk.name: sha256},
        }
        staged = dest / f".{build.MANIFEST}.{os.getpid()}.tmp"
        staged.write_text(json.dumps(manifest, indent=2) + "\n")
        staged.chmod(0o444)  # read-only, like a built image's files
        os.replace(staged, dest / build.MANIFEST)
        return manifest

    def list_cached(self) -> list[CachedImage]:
        found = []
        if not self.images_dir.is_dir():
            return found
        for dest in sorted(p for p in self.images_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            manifest = self._manifest(dest)
            if manifest is None:
                continue
            size = sum(p.stat().st_size for p in dest.iterdir() if p.is_file())
            if manifest.get("source") == "catalog":
                entry = self.catalog.get(dest.name)
                disk = manifest["disk"]
                found.append(CachedImage(name=dest.name, path=dest / disk, size=size,
                                         sha256=manifest["sha256"][disk],
                                         stale=entry is not None and entry.digest != manifest.get("entry_digest"),
                                         built_at=manifest.get("built_at", "?"), kind="catalog"))
                continue
            try:
                digest = load_recipe(dest.name, self.recipe_dir).digest
            except ImageError:
                digest = None
            found.append(CachedImage(name=dest.name, path=dest / build.DISK, size=size,
                                     sha256=manifest["sha256"][build.DISK],
                                     stale=digest is not None and digest != manifest.get("recipe_digest"),
                                     built_at=manifest.get("built_at", "?")))
        return found

    def remove(self, name: str) -> bool:
        dest = self.images_dir / checked("image", name)
        if not dest.exists():
            return False
        shutil.rmtree(dest)
        return True


def _files_digest(manifest: dict) -> str:
    """One sha256 over the sha256 of every file of a cached image (checked this session)."""
    listing = "".join(f"{name} {sha}\n" for name, sha in sorted(manifest["sha256"].items()))
    return hashlib.sha256(listing.encode()).hexdigest()
