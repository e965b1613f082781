"""What the image cache holds, one row per name, for ``pytest-kvm image list``: size, digest,
the disk's sha256, and whether it is stale (made from another version of its recipe or
catalog entry) or in the flat layout of earlier versions."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .build import DISK
from .cache import ImageCache, read_manifest


@dataclass(frozen=True)
class CachedImage:
    name: str
    size: int  # bytes, the current digest's files (or the old copy's)
    sha256: str  # the disk's
    stale: bool  # made from another version of its recipe or catalog entry
    built_at: str
    kind: str = "recipe"  # "recipe" (built) or "catalog" (downloaded)
    digest: str = ""  # the current digest; "": old layout
    older: int = 0  # digests kept besides the current one (a running session uses them)
    old_layout: bool = False  # the flat layout of earlier versions: made again on next use


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def list_cached(cache: ImageCache, wanted: Callable[[str, str], str | None]) -> list[CachedImage]:
    """Every name in *cache*; ``wanted(name, kind)`` is the digest of the recipe or catalog
    entry (*kind*) that name would be made from now, or None if there is none."""
    found: list[CachedImage] = []
    for name in cache.names():
        directory = cache.name_dir(name)
        digests = cache.digests(name)
        located = cache.located(name)
        if located is None:
            old = read_manifest(directory)
            if old is not None:  # the flat layout of earlier versions
                found.append(CachedImage(
                    name=name, size=_size(directory), sha256="", stale=True,
                    built_at=old.get("built_at", "?"),
                    kind="catalog" if old.get("source") == "catalog" else "recipe",
                    older=len(digests), old_layout=True))
            continue
        pointer, manifest = located
        digest, kind = pointer["digest"], pointer.get("source", "recipe")
        dest = directory / digest
        disk = manifest.get("disk", "") if kind == "catalog" else DISK
        current = wanted(name, kind)
        found.append(CachedImage(
            name=name, size=_size(dest), sha256=manifest["sha256"].get(disk, "?"),
            stale=current is not None and current != pointer.get("source_digest"),
            built_at=manifest.get("built_at", "?"), kind=kind,
            digest=digest, older=len([d for d in digests if d != digest])))
    return found
