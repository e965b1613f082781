"""libvirt's QEMU save image, read and re-streamed with another domain definition.

A save image is libvirt's header (``src/qemu/qemu_saveimage.h``: magic, version,
``data_len``, ``was_running``, format, ``cookieOffset``, unused words), then
``data_len`` bytes holding the domain XML, a NUL, libvirt's migration cookie and
zero padding (64 KiB of it, meant for editing the XML), then QEMU's migration
stream. Restoring through ``dxml`` runs an ABI check that refuses another name or
UUID, so one saved golden could only ever run once at a time.

Every clone of a golden is instead restored from a FIFO of its own: a thread
writes the header with the clone's own XML (name, UUID, MAC, VM generation ID,
files, port) and then copies the golden's migration stream unchanged behind it.
libvirt reads the header and hands the rest to QEMU exactly as it does with the
pipe of a compressed image. Nothing is copied on disk and the golden's file is
only ever read, so any number of clones (and sessions) share it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"LibvirtQemudSave"
PARTIAL = b"LibvirtQemudPart"  # a save that never finished
# magic[16], version, data_len, was_running, format, cookieOffset, unused[14]
HEADER = struct.Struct("<16s5I14I")
FORMAT_RAW = 0
CHUNK = 1 << 20
OPEN_WAIT = 60.0  # seconds libvirt may take to open the FIFO for reading


class SaveImageError(ValueError):
    """A save image that cannot be used (truncated, unfinished, compressed, not one)."""


@dataclass(frozen=True)
class SaveImage:
    """The parsed head of a save image: what is needed to stream it with another XML."""

    path: Path
    version: int
    data_len: int
    was_running: int
    xml: str
    cookie: bytes  # libvirt's migration cookie (NUL-terminated XML), possibly empty
    stream_offset: int  # where QEMU's migration stream starts
    size: int

    @classmethod
    def read(cls, path: Path) -> "SaveImage":
        path = Path(path)
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(HEADER.size)
            return cls.parse(head + fh.read(cls.data_length(head, path, size)), path, size)

    @staticmethod
    def data_length(head: bytes, path: Path | str, size: int) -> int:
        """The length of the data block (XML, cookie, padding) after the header *head*
        (the first :data:`HEADER` ``.size`` bytes of the image at *path*, *size* bytes)."""
        if len(head) < HEADER.size:
            raise SaveImageError(f"{path}: too short for a libvirt save image ({size} bytes)")
        magic, version, data_len, was_running, fmt, cookie_offset, *_ = HEADER.unpack(head[:HEADER.size])
        if magic == PARTIAL:
            raise SaveImageError(f"{path}: the save never finished")
        if magic != MAGIC:
            raise SaveImageError(f"{path}: not a libvirt QEMU save image")
        if fmt != FORMAT_RAW:
            raise SaveImageError(f"{path}: compressed save images (format {fmt}) are not supported")
        return data_len

    @classmethod
    def parse(cls, head: bytes, path: Path | str, size: int) -> "SaveImage":
        """The image at *path* (*size* bytes, maybe on another machine) from its first
        bytes *head*: the header and the data block at least."""
        data_len = cls.data_length(head, path, size)
        _magic, version, _len, was_running, _fmt, cookie_offset, *_ = HEADER.unpack(head[:HEADER.size])
        data = head[HEADER.size:HEADER.size + data_len]
        if len(data) < data_len or size <= HEADER.size + data_len:
            raise SaveImageError(f"{path}: truncated ({size} bytes)")
        xml_len = cookie_offset or data_len
        xml = data[:xml_len].split(b"\0", 1)[0].decode()
        cookie = data[xml_len:].split(b"\0", 1)[0] if cookie_offset else b""
        return cls(Path(path), version, data_len, was_running, xml, cookie,
                   HEADER.size + data_len, size)

    def header_with(self, xml: str) -> bytes:
        """The header and data block of this image, carrying *xml* instead of its own."""
        xml_bytes = xml.encode() + b"\0"
        cookie = self.cookie + b"\0" if self.cookie else b""
        used = len(xml_bytes) + len(cookie)
        if used > self.data_len:
            raise SaveImageError(f"{self.path}: the new domain XML does not fit in the save "
                                 f"image's header ({used} > {self.data_len} bytes)")
        head = HEADER.pack(MAGIC, self.version, self.data_len, self.was_running, FORMAT_RAW,
                           len(xml_bytes) if cookie else 0, *([0] * 14))
        return head + xml_bytes + cookie + b"\0" * (self.data_len - used)


class Feeder:
    """Writes a save image with another XML into a FIFO, in a thread, for one restore.

    ``start()`` creates the FIFO; the thread waits until libvirt opens it, writes the
    new header, then the golden's migration stream. ``finish()`` stops a writer that
    libvirt never opened (a restore that failed early) and reports a write error.
    """

    def __init__(self, image: SaveImage, xml: str, fifo: Path) -> None:
        self.image = image
        self.fifo = fifo
        self._head = image.header_with(xml)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"pytest-kvm-feed-{fifo.parent.name}",
                                        daemon=True)

    def start(self) -> "Feeder":
        os.mkfifo(self.fifo, 0o600)
        self._thread.start()
        return self

    def _open_writer(self) -> int | None:
        deadline = time.monotonic() + OPEN_WAIT
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nobody opened {self.fifo} in {OPEN_WAIT:g} s") from None
                time.sleep(0.005)
                continue
            os.set_blocking(fd, True)
            return fd
        return None

    def _run(self) -> None:
        try:
            fd = self._open_writer()
            if fd is None:
                return
            try:
                view = memoryview(self._head)
                while view:
                    view = view[os.write(fd, view):]
                with self.image.path.open("rb") as src:
                    offset = self.image.stream_offset
                    while True:
                        sent = os.sendfile(fd, src.fileno(), offset, CHUNK)
                        if sent == 0:
                            break
                        offset += sent
            finally:
                os.close(fd)
        except BrokenPipeError:
            pass  # the reader went away: libvirt/QEMU report why
        except BaseException as exc:  # noqa: BLE001 - handed to finish()
            self._error = exc

    def finish(self, timeout: float = 30.0) -> None:
        """Wait for the writer (after the restore returned); remove the FIFO."""
        self._stop.set()
        self._thread.join(timeout)
        with contextlib.suppress(FileNotFoundError):
            self.fifo.unlink()
        if self._error is not None:
            raise self._error
