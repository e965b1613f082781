"""A catalog entry's image (a vendor's cloud image) downloaded into a staging directory and
described by its manifest: what :mod:`pytest_kvm.images.build` is for a recipe. The image
cache renames the directory into place once this returns."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ImageError
from .cache import utc_now
from .catalog import CatalogEntry
from ..progress import Progress
from .download import RetryPolicy, fetch
from .qemu_img import inspect_image


def download_image(entry: CatalogEntry, out: Path, *, mirror: str | None, policy: RetryPolicy,
                   progress: Progress | Callable[[str], None]) -> dict:
    """Fetch *entry* into the empty directory *out*, check that it is the disk format the
    entry says, and return its manifest. *progress* shows a bar on a terminal, and a line
    once the download is complete."""
    progress = Progress.of(progress)
    disk = out / f"disk.{entry.format}"
    started = time.monotonic()
    with progress.bar(f"downloading {entry.name}") as bar:
        result = fetch(entry, disk, mirror=mirror, policy=policy, log=progress,
                       progress=bar.update)
    seconds = time.monotonic() - started
    progress(f"downloaded {entry.name}: {bar.done / 2**20:.1f} MiB in {seconds:.0f} s, "
             f"verified by {result.verified_by}")
    found = inspect_image(disk)
    if found != entry.format:
        raise ImageError(f"image catalog {entry.source}: entry {entry.name!r} says format "
                         f"{entry.format!r} but {result.url} is {found!r}; fix the entry")
    algorithm, value = result.source_digest
    if entry.trust_on_first_use:
        progress(f"warning: {entry.name}: its vendor publishes no checksum, so this first "
                 f"download is trusted as it is ({algorithm} {value}); pin it with "
                 f'{algorithm} = "{value}" in a catalog file of yours')
    return {
        "name": entry.name, "source": "catalog", "entry_digest": entry.digest,
        "url": entry.url, "downloaded_from": result.url, "verified_by": result.verified_by,
        "download_digest": {algorithm: value},
        "disk": disk.name, "format": entry.format, "family": entry.family,
        "firmware": entry.firmware, "login_user": entry.login_user,
        "min_memory_mib": entry.min_memory_mib, "built_at": utc_now(),
        "sha256": {disk.name: result.sha256},
    }
