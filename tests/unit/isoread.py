"""Reading a seed ISO back the way a guest does (by Rock Ridge names), for the seed tests."""
import io

import pycdlib


def read_iso(data: bytes) -> dict[str, bytes]:
    """Every file of an ISO by its Rock Ridge name; ``.volume``: its volume label."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    found: dict[str, bytes] = {}
    try:
        for dirpath, _dirs, filenames in iso.walk(rr_path="/"):
            for name in filenames:
                rr_path = f"{dirpath.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=rr_path)
                found[rr_path.lstrip("/")] = out.getvalue()
        found[".volume"] = iso.pvd.volume_identifier.rstrip(b" ")
    finally:
        iso.close()
    return found
