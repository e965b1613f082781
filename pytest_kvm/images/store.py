"""Which base image an OS name means: the facade that turns a name into a :class:`BaseImage`.

Names come from three places: local images registered with ``--kvm-image NAME=PATH``
(used as they are), recipes in ``guest-images/`` (:mod:`~pytest_kvm.images.recipes`, built
on first use by :mod:`~pytest_kvm.images.build`), and the image catalog
(``guest-images/catalog.toml`` plus the user's catalog files,
:mod:`~pytest_kvm.images.catalog`: vendor cloud images, downloaded and verified on first
use by :mod:`~pytest_kvm.images.vendor`). Built and downloaded images live in the
content-addressed cache of :mod:`~pytest_kvm.images.cache`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..arches import split_image_name
from ..errors import ImageError
from ..families import family_for_name
from . import build, vendor
from .cache import ImageCache, Removal, Source
from .catalog import CatalogEntry, builtin_catalog, load_catalog
from .download import RetryPolicy
from .listing import CachedImage, list_cached
from .qemu_img import inspect_image
from .recipes import list_recipes, load_recipe, recipes_dir


@dataclass(frozen=True)
class BaseImage:
    """A disk to boot from; with a kernel, it is booted directly (no bootloader)."""

    name: str
    disk: Path
    format: str
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    #: whether it has the plain seed's unit (a recipe's ``plain_seed``: see seed/plain.py)
    plain_seed: bool = False
    family: str = "linux"
    firmware: str | None = None  # None: the family's default
    login_user: str | None = None  # None: the plugin's own user (recipe images)
    min_memory_mib: int | None = None
    digest: str | None = None  # its cache directory's name (see images/cache.py); None: a local image
    # (file name, sha256) of each of its files, from the manifest and checked against the files
    # when the session resolved it (cached images; empty for a local one)
    files_sha256: tuple[tuple[str, str], ...] = ()


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
        self.local_images = dict(local_images or {})
        self.progress = progress
        self.recipe_dir = recipe_dir or recipes_dir()
        self.mirror = mirror or None
        self.catalogs = tuple(Path(p) for p in catalogs)
        self.retry = retry or RetryPolicy()
        self.cache = ImageCache(Path(cache_dir) / "images", progress)
        self._catalog: dict[str, CatalogEntry] | None = None
        self._verified: dict[str, BaseImage] = {}

    @property
    def images_dir(self) -> Path:
        return self.cache.directory

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

    def _recipe_of(self, name: str):
        """The recipe image *name* is built from (``debian-12-arm64``: ``debian-12`` for
        arm64), or None if *name* is not a recipe's image."""
        os_name, arch = split_image_name(name)
        if os_name not in list_recipes(self.recipe_dir):
            return None
        return load_recipe(os_name, self.recipe_dir, arch=arch)

    def check_name(self, name: str) -> None:
        if name not in self.known_names() and self._recipe_of(name) is None:
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
        return self.ensure(name)

    def available(self, name: str) -> bool:
        """Whether *name* can be booted without downloading: a local image, a recipe (built
        offline) or a catalog entry whose current download is cached."""
        if name in self.local_images or name in list_recipes(self.recipe_dir):
            return True
        if name not in self.catalog and split_image_name(name)[0] in list_recipes(self.recipe_dir):
            return True
        entry = self.catalog.get(name)
        if entry is None:
            return False
        found = self.cache.located(name)
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

    def ensure_built(self, name: str, *, force: bool = False) -> BaseImage:
        """Build the recipe of image *name* unless a build of its current version is cached;
        verify it once. *name* is a recipe's for amd64 (``debian-12``), else it ends with the
        architecture (``debian-12-arm64``: recipe ``debian-12`` built for arm64)."""
        if name in self._verified and not force:
            return self._verified[name]
        os_name, arch = split_image_name(name)
        recipe = load_recipe(os_name, self.recipe_dir, arch=arch)
        dest, manifest = self.cache.ensure(name, Source(
            kind="recipe", digest=recipe.digest, verb="build", requested="rebuild requested",
            changed="recipe changed since it was built",
            fix=f"rebuild it with `pytest-kvm image build --force {name}`",
            announce=lambda why: self.progress(f"building base image {name} ({why})"),
            make=lambda staging: build.build_image(recipe, staging, self.progress)), force=force)
        return self._remember(BaseImage(
            name=name, disk=dest / build.DISK, format=manifest["format"],
            kernel=dest / build.KERNEL, initrd=dest / build.INITRD,
            cmdline=manifest["kernel_cmdline"], family=manifest["family"],
            plain_seed=manifest.get("plain_seed", False), digest=dest.name, files_sha256=tuple(sorted(manifest["sha256"].items()))))

    def _catalog_source(self, entry: CatalogEntry) -> Source:
        return Source(
            kind="catalog", digest=entry.digest, verb="download", requested="download requested",
            changed="catalog entry changed since it was downloaded",
            fix=f"download it again with `pytest-kvm image fetch --force {entry.name}`",
            announce=lambda why: self.progress(f"downloading base image {entry.name} ({why}) from "
                                               f"{entry.with_mirror(self.mirror).url}"),
            make=lambda staging: vendor.download_image(entry, staging, mirror=self.mirror,
                                                       policy=self.retry, progress=self.progress))

    def ensure_downloaded(self, name: str, *, force: bool = False) -> BaseImage:
        """Download catalog entry *name* unless a current copy is cached; verify it once."""
        if name in self._verified and not force:
            return self._verified[name]
        entry = self.catalog.get(name)
        if entry is None and name in list_recipes(self.recipe_dir):
            raise ImageError(f"{name} is built from a recipe, not downloaded: "
                             f"`pytest-kvm image build {name}`")
        if entry is None:
            raise ImageError(f"no catalog entry named {name!r} "
                             f"(known: {', '.join(sorted(self.catalog)) or 'none'})")
        dest, manifest = self.cache.ensure(name, self._catalog_source(entry), force=force)
        return self._remember(BaseImage(
            name=name, disk=dest / manifest["disk"], format=manifest["format"],
            family=entry.family, firmware=entry.firmware,
            login_user=entry.login_user, min_memory_mib=entry.min_memory_mib,
            digest=dest.name, files_sha256=tuple(sorted(manifest["sha256"].items()))))

    def _remember(self, image: BaseImage) -> BaseImage:
        self._verified[image.name] = image
        return image

    # -- the `pytest-kvm image` command ---------------------------------------------------------
    def list_cached(self) -> list[CachedImage]:
        return list_cached(self.cache, self._wanted)

    def _wanted(self, name: str, kind: str) -> str | None:
        """The digest of the catalog entry or recipe *name* would be made from now."""
        if kind == "catalog":
            entry = self.catalog.get(name)
            return entry.digest if entry else None
        os_name, arch = split_image_name(name)
        try:
            return load_recipe(os_name, self.recipe_dir, arch=arch).digest
        except ImageError:
            return None

    def remove(self, name: str) -> Removal:
        """Remove every digest of NAME that no running session uses (see
        :meth:`ImageCache.remove <pytest_kvm.images.cache.ImageCache.remove>`)."""
        return self.cache.remove(name)

    # -- the session's end ---------------------------------------------------------------------
    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release this store's use locks; remove the old digests nobody uses any more."""
        self.cache.close()
