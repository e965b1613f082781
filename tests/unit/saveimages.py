"""A libvirt save image written by the tests (header, XML, cookie, stream)."""
from pytest_kvm.vm.saveimage import HEADER, MAGIC

XML = "<domain type='qemu'><name>golden</name><uuid>u-1</uuid></domain>"
COOKIE = "<qemu-migration><name>golden</name></qemu-migration>"
STREAM = b"QEVM" + bytes(range(256)) * 4096  # ~1 MiB standing in for QEMU's migration stream


def write_image(path, xml=XML, cookie=COOKIE, magic=MAGIC, pad=64 * 1024, stream=STREAM, fmt=0):
    xml_bytes, cookie_bytes = xml.encode() + b"\0", cookie.encode() + b"\0"
    data_len = len(xml_bytes) + len(cookie_bytes) + pad
    head = HEADER.pack(magic, 2, data_len, 1, fmt, len(xml_bytes), *([0] * 14))
    body = xml_bytes + cookie_bytes + b"\0" * pad
    path.write_bytes(head + body + stream)
    return path
