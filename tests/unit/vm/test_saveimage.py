"""libvirt save images: reading the header, and streaming one with another XML."""
import os
import threading

import pytest

from pytest_kvm.vm.saveimage import HEADER, MAGIC, PARTIAL, Feeder, SaveImage, SaveImageError

from saveimages import COOKIE, STREAM, XML, write_image


def test_read_finds_xml_cookie_and_stream(tmp_path):
    image = SaveImage.read(write_image(tmp_path / "m.save"))
    assert image.xml == XML
    assert image.cookie == COOKIE.encode()
    assert image.was_running == 1
    assert (tmp_path / "m.save").read_bytes()[image.stream_offset:] == STREAM


def test_header_with_a_longer_xml_keeps_cookie_and_length(tmp_path):
    image = SaveImage.read(write_image(tmp_path / "m.save"))
    longer = XML.replace("golden", "pytest-kvm-12345-abcd-17" * 10)
    rewritten = write_image(tmp_path / "n.save", pad=0, stream=b"")  # placeholder, overwritten
    rewritten.write_bytes(image.header_with(longer) + STREAM)
    again = SaveImage.read(rewritten)
    assert again.xml == longer and again.cookie == image.cookie
    assert again.data_len == image.data_len and again.stream_offset == image.stream_offset


def test_an_xml_larger_than_the_padding_is_refused(tmp_path):
    image = SaveImage.read(write_image(tmp_path / "m.save", pad=16))
    with pytest.raises(SaveImageError, match="does not fit"):
        image.header_with(XML + " " * 100)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:50]), "too short"),
    (lambda p: p.write_bytes(p.read_bytes()[:HEADER.size + 100]), "truncated"),
    (lambda p: write_image(p, magic=PARTIAL), "never finished"),
    (lambda p: write_image(p, magic=b"SomethingElse!!!"), "not a libvirt"),
    (lambda p: write_image(p, fmt=1), "compressed"),
])
def test_damaged_images_are_named(tmp_path, damage, message):
    path = write_image(tmp_path / "m.save")
    damage(path)
    with pytest.raises(SaveImageError, match=message):
        SaveImage.read(path)


def test_feeder_streams_header_and_stream_through_a_fifo(tmp_path):
    image = SaveImage.read(write_image(tmp_path / "m.save"))
    new_xml = XML.replace("golden", "clone-1")
    feeder = Feeder(image, new_xml, tmp_path / "restore.fifo").start()
    received = []
    reader = threading.Thread(target=lambda: received.append((tmp_path / "restore.fifo").read_bytes()))
    reader.start()
    reader.join(30)
    feeder.finish()
    data = received[0]
    assert data == image.header_with(new_xml) + STREAM
    assert not (tmp_path / "restore.fifo").exists()


def test_feeder_nobody_reads_finish_stops_it(tmp_path):
    image = SaveImage.read(write_image(tmp_path / "m.save"))
    feeder = Feeder(image, XML, tmp_path / "restore.fifo").start()
    feeder.finish(timeout=5)  # a restore that failed before opening the FIFO
    assert not feeder._thread.is_alive()
    assert not os.path.exists(tmp_path / "restore.fifo")


def test_parse_reads_an_image_on_another_machine_from_its_head_alone(tmp_path):
    """A remote golden keeps only the head here: parse gives the same XML, cookie and
    stream offset as reading the whole file, with the path and size of the host's copy."""
    whole = write_image(tmp_path / "m.save")
    image = SaveImage.read(whole)
    head = whole.read_bytes()[:image.stream_offset]
    remote = SaveImage.parse(head, "/var/lib/libvirt/pytest-kvm/g.save", image.size)
    assert (remote.xml, remote.cookie, remote.stream_offset, remote.data_len) == \
        (image.xml, image.cookie, image.stream_offset, image.data_len)
    assert str(remote.path) == "/var/lib/libvirt/pytest-kvm/g.save" and remote.size == image.size
    assert remote.header_with(XML) == head
    with pytest.raises(SaveImageError, match="truncated"):
        SaveImage.parse(head[:-1], "g.save", image.size)
    with pytest.raises(SaveImageError, match="truncated"):  # the host's file ends at the head
        SaveImage.parse(head, "g.save", len(head))
