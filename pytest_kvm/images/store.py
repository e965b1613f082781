"""Which base image an OS name means, and making sure it is in the cache.

Names come from three places: recipes in ``guest-images/`` (built on first use),
the image catalog (``guest-images/catalog.toml`` plus the user's catalog files:
vendor cloud images, downloaded and verified on first use), and local images
registered with ``--kvm-image NAME=PATH``.

Built and downloaded images are content-addressed and never change once cached::

    <cache>/images/NAME.lock           exclusive while NAME is built, downloaded, pruned or removed
    <cache>/images/NAME/current.json   which digest NAME is now, and the recipe or catalog
                                       entry it was made from (replaced with os.replace)
    <cache>/images/NAME/DIGEST/        manifest.json and the image's files, all 0444
    <cache>/images/NAME/DIGEST.use     a shared flock per session (or command) using DIGEST
    <cache>/images/NAME/.stage-*/      a build or download in progress (under NAME.lock)

DIGEST is the sha256 of the manifest's file list: one line ``FILENAME SHA256`` per file
(the disk; the kernel and initrd too for a built image), sorted by file name. It is
:attr:`BaseImage.digest`, part of every golden's and snapshot's key. A build or download
goes to a staging directory under ``NAME/`` and is renamed to ``NAME/DIGEST/`` once
complete; then ``current.json`` names it. A digest directory is never modified or
replaced, so an overlay or golden whose backing file is in it keeps working; one that is
no longer current is removed once no session holds its ``.use`` lock (checked with an
exclusive non-blocking flock): after each new build or download, when a session that used
it ends, and by ``pytest-kvm image rm``. A cache in the flat layout of earlier versions
(``NAME/manifest.json``) counts as not cached: the next build or download replaces it.
Each session checks the files of the digests it uses by hash, once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import build
from ..files import file_lock, hold_shared, sha256_file, try_lock, writable
from .catalog import CatalogEntry, builtin_catalog, load_catalog
from .download import ProgressLine, RetryPolicy, fetch
from ..names import checked
from ..errors import ImageError
from ..families import family_for_name
from .recipes import list_recipes, load_recipe, recipes_dir
from .qemu_img import inspect_image


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
    digest: str | None = None  # its cache directory's name (see above); None: not cached (local)
    # (file name, sha256) of each of its files, from the manifest and checked against the files
    # when the session resolved it (cached images; empty for a local one)
    files_sha256: tuple[tuple[str, str], ...] = ()


POINTER = "current.json"
STAGE_PREFIX = ".stage-"
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CachedImage:
    name: str
    path: Path | None  # the current digest's disk; None: only a copy in the old layout
    size: int  # bytes, the current digest's files (or the old copy's)
    sha256: str  # the disk's
    stale: bool  # made from another version of its recipe or catalog entry
    built_at: str
    kind: str = "recipe"  # "recipe" (built) or "catalog" (downloaded)
    digest: str = ""  # the current digest; "": old layout
    older: int = 0  # digests kept besides the current one (a running session uses them)
    old_layout: bool = False  # the flat layout of earlier versions: made again on next use


@dataclass(frozen=True)
class Removal:
    """What ``ImageStore.remove`` did to one name."""

    removed: list[str]  # digests removed ("old layout": a flat copy of an earlier version)
    left: list[str]  # digests left because a running session uses them
    current: str | None  # the digest that was current


class _Source:
    """What NAME's current digest must have been made from, and how to make it again."""

    def __init__(self, kind: str, digest: str, verb: str, requested: str, changed: str,
                 announce: Callable[[str], None], make: Callable[[Path], dict]) -> None:
        self.kind, self.digest, self.verb = kind, digest, verb
        self.requested, self.changed, self.announce, self.make = requested, changed, announce, make

    def matches(self, pointer: dict | None) -> bool:
        return (pointer is not None and pointer.get("source") == self.kind
                and pointer.get("source_digest") == self.digest)


class ImageStore:
    """Resolves OS names to base images in one cache directory."""

    def __init__(self, cache_dir: Path, local_images: dict[str, Path] | None = None,
                 progress: Callable[[str], None] = lambda msg: None,
                 recipe_dir: Path | None = None, *, mirror: str | None = None,
                 catalogs: Sequence[Path] = (), retry: RetryPolicy | None = None) -> None:
        """*mirror*: URL prefix that catalog downloads are fetched from instead of the
        vendor (see :func:`pytest_kvm.images.catalog.mirror_url`); *catalogs*: the user's
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
        self._held: dict[tuple[str, str], int] = {}  # (name, digest) -> fd of our use lock

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
        if entry is None:
            return False
        found = self._located(name)
        return found is not None and self._catalog_source(entry).matches(found[0])

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

    # -- the layout ----------------------------------------------------------------------
    def name_dir(self, name: str) -> Path:
        return self.images_dir / checked("image", name)

    def _lock_file(self, name: str) -> Path:
        return self.images_dir / f"{checked('image', name)}.lock"

    def _use_file(self, name: str, digest: str) -> Path:
        return self.name_dir(name) / f"{digest}.use"

    def _pointer(self, name: str) -> dict | None:
        try:
            pointer = json.loads((self.name_dir(name) / POINTER).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(pointer, dict) or not _DIGEST.fullmatch(str(pointer.get("digest", ""))):
            return None
        return pointer

    def _located(self, name: str) -> tuple[dict, dict] | None:
        """(pointer, manifest) of NAME's current digest; None: not cached (no pointer, or
        its directory is gone or has no manifest)."""
        pointer = self._pointer(name)
        if pointer is None:
            return None
        manifest = self._manifest(self.name_dir(name) / pointer["digest"])
        return None if manifest is None else (pointer, manifest)

    def _digests(self, name: str) -> list[str]:
        """The digest directories of NAME, current or not."""
        directory = self.name_dir(name)
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and _DIGEST.fullmatch(p.name))

    @staticmethod
    def _manifest(dest: Path) -> dict | None:
        try:
            manifest = json.loads((dest / build.MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) and isinstance(manifest.get("sha256"), dict) else None

    # -- use locks ------------------------------------------------------------------------
    def _hold(self, name: str, digest: str) -> bool:
        """Hold a shared use lock on NAME's *digest* until :meth:`close`; False if that
        digest is gone (removed between reading the pointer and locking it)."""
        if (name, digest) in self._held:
            return True
        use = self._use_file(name, digest)
        try:
            with writable(self.images_dir, f"locking image {name} for this session"):
                fd = hold_shared(use)
        except FileNotFoundError:  # NAME's directory was removed meanwhile
            return False
        try:
            now = os.stat(use)
            same = (now.st_dev, now.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except FileNotFoundError:
            same = False
        # a remover unlinks a use file only after removing its directory, holding it
        # exclusively: our lock counts only if it is on the file there now, and the
        # directory is still there
        if not same or self._manifest(self.name_dir(name) / digest) is None:
            os.close(fd)
            return False
        self._held[(name, digest)] = fd
        return True

    def __enter__(self) -> "ImageStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release this store's use locks (at the session's end), then remove the old
        digests nobody uses any more of the names it used, unless a build holds their lock."""
        names = sorted({name for name, _ in self._held})
        for fd in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held.clear()
        for name in names:
            with contextlib.suppress(OSError):
                fd = try_lock(self._lock_file(name))
                if fd is None:  # being built or downloaded: that prunes it
                    continue
                try:
                    removed, _ = self._prune(name)
                finally:
                    os.close(fd)
                for digest in removed:
                    self.progress(f"{name}: old image {digest[:12]} removed (no session uses it now)")

    def _remove_digest(self, name: str, digest: str) -> bool:
        """Remove one digest directory and its use file if nobody uses it (we hold NAME's lock)."""
        use = self._use_file(name, digest)
        fd = try_lock(use)
        if fd is None:
            return False
        try:
            target = self.name_dir(name) / digest
            if target.exists():
                shutil.rmtree(target)
            use.unlink(missing_ok=True)  # after the directory: see _hold
        finally:
            os.close(fd)
        return True

    def _prune(self, name: str) -> tuple[list[str], list[str]]:
        """Remove NAME's digests that are not current and that no session uses (we hold
        NAME's lock); (removed, left in use)."""
        pointer = self._pointer(name)
        current = pointer["digest"] if pointer else None
        removed, left = [], []
        for digest in self._digests(name):
            if digest != current:
                (removed if self._remove_digest(name, digest) else left).append(digest)
        for use in self.name_dir(name).glob("*.use"):  # use files whose directory is gone
            digest = use.name.removesuffix(".use")
            if digest != current and digest not in left and not (use.parent / digest).exists():
                self._remove_digest(name, digest)
        return removed, left

    def _sweep(self, name: str) -> bool:
        """Remove what killed runs left under NAME (staging and build directories, pointer
        drafts) and a copy in the flat layout of earlier versions (we hold NAME's lock).
        True if there was such a copy."""
        directory = self.name_dir(name)
        old = (directory / build.MANIFEST).exists()
        if old:  # the manifest first: a crash below leaves "not cached" either way
            (directory / build.MANIFEST).unlink()
        for path in (directory.iterdir() if directory.is_dir() else ()):
            if path.name.startswith("."):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            elif not path.is_dir() and path.name != POINTER and not path.name.endswith(".use"):
                old = True
                path.unlink(missing_ok=True)  # a flat copy's disk, kernel, initrd, lock
        return old

    # -- making a digest -------------------------------------------------------------------
    def _ensure(self, name: str, source: _Source, *, force: bool) -> tuple[Path, dict, bool]:
        """NAME's current digest directory and its manifest, made with ``source.make`` if
        it is missing, made from another version of its source, or *force*; held by a use
        lock until :meth:`close`. Returns (directory, manifest, made now)."""
        if not force:
            for _ in range(3):  # the pointer moves only under NAME's lock, which we do not hold
                found = self._located(name)
                if found is None or not source.matches(found[0]):
                    break
                if self._hold(name, found[0]["digest"]):
                    return self.name_dir(name) / found[0]["digest"], found[1], False
        with writable(self.images_dir, f"locking the cache to {source.verb} {name}"):
            self.images_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self._lock_file(name),
                       on_wait=lambda: self.progress(f"waiting for another process to {source.verb} {name}")):
            found = self._located(name)  # another worker may have made it meanwhile
            fresh = force or found is None or not source.matches(found[0])
            with writable(self.images_dir, f"{source.verb} image {name}"):
                if fresh:
                    old = (self.name_dir(name) / build.MANIFEST).exists()
                    why = (source.requested if force else source.changed if found is not None
                           else "not cached; the copy an earlier pytest-kvm version left in the old "
                                "layout is replaced" if old else "not cached")
                    source.announce(why)
                    digest = self._make(name, source)
                else:
                    digest = found[0]["digest"]
                if not self._hold(name, digest):  # cannot happen: only we may remove it now
                    raise ImageError(f"cached image {name}: {self.name_dir(name) / digest} vanished")
                removed, left = self._prune(name)
            for old_digest in removed:
                self.progress(f"{name}: old image {old_digest[:12]} removed")
            for old_digest in left:
                self.progress(f"{name}: old image {old_digest[:12]} kept: a running session uses it "
                              "(removed once none does)")
        dest = self.name_dir(name) / digest
        manifest = self._manifest(dest)
        assert manifest is not None  # held, complete
        return dest, manifest, fresh

    def _make(self, name: str, source: _Source) -> str:
        """Make NAME in a staging directory, rename it to its digest, point ``current.json``
        at it (we hold NAME's lock); its digest."""
        directory = self.name_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        if self._sweep(name):
            self.progress(f"{name}: removed the copy an earlier pytest-kvm version left in {directory}")
        staging = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=directory))
        try:
            manifest = source.make(staging)
            digest = self._install(name, staging, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        pointer = {"digest": digest, "source": source.kind, "source_digest": source.digest,
                   "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        draft = directory / f".{POINTER}.{os.getpid()}.tmp"
        draft.write_text(json.dumps(pointer, indent=2) + "\n")
        os.replace(draft, directory / POINTER)
        self.progress(f"{name}: image {digest[:12]} in {directory / digest}")
        return digest

    def _install(self, name: str, staging: Path, manifest: dict) -> str:
        """Rename the complete *staging* directory to NAME's digest directory, read-only;
        if that digest is cached already (the same files again), the cached copy stays."""
        digest = _files_digest(manifest)
        for path in staging.iterdir():
            if path.name not in manifest["sha256"] and path.name != build.MANIFEST:
                path.unlink()  # e.g. the downloader's lock file
            else:
                path.chmod(0o444)
        staging.chmod(0o755)
        target = self.name_dir(name) / digest
        if target.exists():
            try:
                cached = self._manifest(target)
                if cached is None:
                    raise ImageError(f"{target / build.MANIFEST} is missing")
                self._check_files(name, target, cached, "")
                self.progress(f"{name}: the same files are cached already as {digest[:12]}; that copy stays")
                shutil.rmtree(staging)
                return digest
            except ImageError:  # damaged: replaced unless someone uses it (then fail)
                if not self._remove_digest(name, digest):
                    raise ImageError(f"cached image {name}: {target} is damaged and a running "
                                     "session uses it; try again once it ends") from None
        os.rename(staging, target)
        return digest

    # -- recipe-built images ------------------------------------------------
    def ensure_built(self, name: str, *, force: bool = False) -> BaseImage:
        if name in self._verified and not force:
            return self._verified[name]
        recipe = load_recipe(name, self.recipe_dir)
        source = _Source("recipe", recipe.digest, "build", "rebuild requested",
                         "recipe changed since it was built",
                         lambda why: self.progress(f"building base image {name} ({why})"),
                         lambda staging: build.build_image(recipe, staging, self.progress))
        dest, manifest, fresh = self._ensure(name, source, force=force)
        if not fresh:  # just hashed by the build; otherwise check once per session
            self._check_files(name, dest, manifest,
                              f"rebuild it with `pytest-kvm image build --force {name}`")
        image = BaseImage(name=name, disk=dest / build.DISK, format=manifest["format"],
                          kernel=dest / build.KERNEL, initrd=dest / build.INITRD,
                          cmdline=manifest["kernel_cmdline"], family=manifest["family"],
                          digest=dest.name, files_sha256=tuple(sorted(manifest["sha256"].items())))
        self._verified[name] = image
        return image

    @staticmethod
    def _check_files(name: str, dest: Path, manifest: dict, fix: str) -> None:
        """Every file the manifest lists exists and still has its recorded sha256, and the
        directory's name is the digest of that list."""
        verb = "downloaded" if manifest.get("source") == "catalog" else "built"
        if _DIGEST.fullmatch(dest.name) and _files_digest(manifest) != dest.name:
            raise ImageError(f"cached image {name}: {dest / build.MANIFEST} does not list the "
                             f"files {dest.name} was made of; {fix}")
        for filename, expected in manifest["sha256"].items():
            path = dest / filename
            if not path.is_file():
                raise ImageError(f"cached image {name}: {path} is missing; {fix}")
            if sha256_file(path) != expected:
                raise ImageError(f"cached image {name}: {path} changed since it was {verb} "
                                 f"(sha256 mismatch); {fix}")

    # -- catalog (downloaded) images ------------------------------------------------
    def _catalog_source(self, entry: CatalogEntry) -> _Source:
        return _Source("catalog", entry.digest, "download", "download requested",
                       "catalog entry changed since it was downloaded",
                       lambda why: self.progress(f"downloading base image {entry.name} ({why}) from "
                                                 f"{entry.with_mirror(self.mirror).url}"),
                       lambda staging: self._download(entry, staging))

    def ensure_downloaded(self, name: str, *, force: bool = False) -> BaseImage:
        """Download catalog entry *name* unless a current copy is cached; verify it once."""
        if name in self._verified and not force:
            return self._verified[name]
        entry = self.catalog.get(name)
        if entry is None:
            raise ImageError(f"no catalog entry named {name!r} "
                             f"(known: {', '.join(sorted(self.catalog)) or 'none'})")
        dest, manifest, fresh = self._ensure(name, self._catalog_source(entry), force=force)
        if not fresh:  # just hashed while downloading; otherwise check once per session
            self._check_files(name, dest, manifest,
                              f"download it again with `pytest-kvm image fetch --force {name}`")
        image = BaseImage(name=name, disk=dest / manifest["disk"], format=manifest["format"],
                          family=entry.family, firmware=entry.firmware,
                          login_user=entry.login_user, min_memory_mib=entry.min_memory_mib,
                          digest=dest.name, files_sha256=tuple(sorted(manifest["sha256"].items())))
        self._verified[name] = image
        return image

    def _download(self, entry: CatalogEntry, staging: Path) -> dict:
        """Fetch *entry* into the empty directory *staging* (we hold its name's lock) and
        write its manifest there; the caller renames it into the cache."""
        disk = staging / f"disk.{entry.format}"
        result = fetch(entry, disk, mirror=self.mirror, policy=self.retry, log=self.progress,
                       progress=ProgressLine(f"downloading {entry.name}", self.progress))
        found = inspect_image(disk)
        if found != entry.format:
            raise ImageError(f"image catalog {entry.source}: entry {entry.name!r} says format "
                             f"{entry.format!r} but {result.url} is {found!r}; fix the entry")
        algorithm, value = result.source_digest
        if entry.trust_on_first_use:
            self.progress(f"warning: {entry.name}: its vendor publishes no checksum, so this first "
                          f"download is trusted as it is ({algorithm} {value}); pin it with "
                          f'{algorithm} = "{value}" in a catalog file of yours')
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {
            "name": entry.name, "source": "catalog", "entry_digest": entry.digest,
            "url": entry.url, "downloaded_from": result.url, "verified_by": result.verified_by,
            "download_digest": {algorithm: value},
            "disk": disk.name, "format": entry.format, "family": entry.family,
            "firmware": entry.firmware, "login_user": entry.login_user,
            "min_memory_mib": entry.min_memory_mib, "built_at": now,
            "sha256": {disk.name: result.sha256},
        }
        (staging / build.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest

    # -- the `pytest-kvm image` command ---------------------------------------------------------
    def list_cached(self) -> list[CachedImage]:
        found: list[CachedImage] = []
        if not self.images_dir.is_dir():
            return found
        for directory in sorted(p for p in self.images_dir.iterdir()
                                if p.is_dir() and not p.name.startswith(".")):
            name = directory.name
            digests = self._digests(name)
            located = self._located(name)
            if located is None:
                old = self._manifest(directory)
                if old is not None:  # the flat layout of earlier versions
                    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
                    found.append(CachedImage(
                        name=name, path=None, size=size, sha256="", stale=True,
                        built_at=old.get("built_at", "?"),
                        kind="catalog" if old.get("source") == "catalog" else "recipe",
                        older=len(digests), old_layout=True))
                continue
            pointer, manifest = located
            digest = pointer["digest"]
            dest = directory / digest
            if pointer.get("source") == "catalog":
                entry = self.catalog.get(name)
                disk, wanted = manifest.get("disk", ""), entry.digest if entry else None
            else:
                try:
                    wanted = load_recipe(name, self.recipe_dir).digest
                except ImageError:
                    wanted = None
                disk = build.DISK
            size = sum(p.stat().st_size for p in dest.iterdir() if p.is_file())
            found.append(CachedImage(
                name=name, path=dest / disk, size=size, sha256=manifest["sha256"].get(disk, "?"),
                stale=wanted is not None and wanted != pointer.get("source_digest"),
                built_at=manifest.get("built_at", "?"), kind=pointer.get("source", "recipe"),
                digest=digest, older=len([d for d in digests if d != digest])))
        return found

    def remove(self, name: str) -> Removal:
        """Remove every digest of NAME that no running session uses (and a copy in the old
        layout); the current one too, then NAME is not cached any more."""
        directory = self.name_dir(name)
        if not directory.is_dir():
            return Removal([], [], None)
        with file_lock(self._lock_file(name),
                       on_wait=lambda: self.progress(f"waiting for another process building or "
                                                     f"downloading {name}")):
            pointer = self._pointer(name)
            current = pointer["digest"] if pointer else None
            removed = ["old layout"] if self._sweep(name) else []
            left = []
            for digest in self._digests(name):
                (removed if self._remove_digest(name, digest) else left).append(digest)
            if current not in left:
                (directory / POINTER).unlink(missing_ok=True)
            self._prune(name)  # use files left without their directory
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if nothing is left in it
        return Removal(removed, left, current)


def _files_digest(manifest: dict) -> str:
    """The sha256 of a manifest's file list: ``FILENAME SHA256`` lines sorted by name. It names
    the image's cache directory and is :attr:`BaseImage.digest`."""
    listing = "".join(f"{name} {sha}\n" for name, sha in sorted(manifest["sha256"].items()))
    return hashlib.sha256(listing.encode()).hexdigest()
