"""Trees as tar streams, with real files and the host's GNU tar standing in for the guest's."""
import io
import os
import shlex
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from pytest_kvm.transport.archive import UnsafeArchive, excluded, extract, pack, remote_pack_command, \
    remote_unpack_command
from pytest_kvm.errors import KvmError

EXCLUDE = (".git", "__pycache__", "*.pyc")
KEPT = ["README", "empty", "latest", "pkg", "pkg/mod.py", "pkg/private", "pkg/sub",
        "pkg/sub/deep.txt", "run.sh"]
ODD = "it's a \"dir\" $HOME `x`"  # a path the guest's shell must not interpret


def make_tree(src: Path) -> Path:
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "sub" / "deep.txt").write_text("deep\n")
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "pkg" / "private").mkdir(mode=0o750)
    (src / "pkg" / "private").chmod(0o750)
    run = src / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    os.utime(run, (1_000_000_000, 1_000_000_000))
    readme = src / "README"
    readme.write_text("read me\n")
    readme.chmod(0o444)
    (src / "latest").symlink_to("pkg/sub/deep.txt")
    (src / "empty").mkdir()
    (src / ".git" / "objects").mkdir(parents=True)
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (src / "pkg" / "__pycache__").mkdir()
    (src / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00pyc")
    (src / "pkg" / "mod.pyc").write_bytes(b"\x00pyc")
    return src


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "src")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under *root*: its kind, and its mode and content or its link text."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                entries[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return entries


def kept(src: Path) -> dict[str, tuple]:
    return {rel: entry for rel, entry in snapshot(src).items() if rel in KEPT}


def check_tree(dest: Path, src: Path) -> None:
    assert snapshot(dest) == kept(src)
    assert sorted(snapshot(dest)) == KEPT
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "README").stat().st_mode) == 0o444
    assert stat.S_IMODE((dest / "pkg" / "private").stat().st_mode) == 0o750
    assert (dest / "latest").is_symlink() and os.readlink(dest / "latest") == "pkg/sub/deep.txt"
    assert (dest / "empty").is_dir() and not any((dest / "empty").iterdir())
    assert (dest / "run.sh").stat().st_mtime == 1_000_000_000


# -- exclusion ------------------------------------------------------------------------------
@pytest.mark.parametrize("relpath, patterns, expected", [
    (".git", [".git"], True),
    (".git/objects/ab/cdef", [".git"], True),
    ("./.venv/bin/python", [".venv/"], True),
    ("pkg/__pycache__/mod.cpython-311.pyc", ["__pycache__"], True),
    ("pkg/mod.pyc", ["*.pyc"], True),
    ("pkg/mod.py", ["*.pyc"], False),
    ("src/pkg/mod.pyc", ["pkg/*.pyc"], True),
    ("docs/build/index.html", ["build"], True),
    ("builder", ["build"], False),
    ("my.git", [".git"], False),
    ("pkg/mod.py", [], False),
])
def test_excluded(relpath, patterns, expected):
    assert excluded(relpath, patterns) is expected


# -- pack and extract here ------------------------------------------------------------------
def test_round_trip_keeps_modes_links_empty_dirs_and_drops_excluded(tree, tmp_path):
    stream = io.BytesIO()
    written = pack(tree, stream, exclude=EXCLUDE)
    stream.seek(0)
    extracted = extract(stream, tmp_path / "new" / "dest")
    assert written == extracted == len(KEPT)
    check_tree(tmp_path / "new" / "dest", tree)


def test_pack_writes_relative_sorted_names_without_owners(tree):
    if os.geteuid() == 0:
        os.chown(tree / "pkg" / "mod.py", 4242, 4242, follow_symlinks=False)
    stream = io.BytesIO()
    pack(tree, stream, exclude=EXCLUDE)
    stream.seek(0)
    with tarfile.open(fileobj=stream, mode="r:") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == KEPT
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    assert next(m for m in members if m.name == "latest").issym()


def test_pack_skips_fifos_and_keeps_hard_links(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("shared\n")
    os.link(src / "a", src / "b")
    os.mkfifo(src / "pipe")
    stream = io.BytesIO()
    assert pack(src, stream) == 2
    stream.seek(0)
    assert extract(stream, tmp_path / "dest") == 2
    assert sorted(os.listdir(tmp_path / "dest")) == ["a", "b"]
    assert (tmp_path / "dest" / "a").stat().st_ino == (tmp_path / "dest" / "b").stat().st_ino


def test_pack_refuses_a_single_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        pack(tmp_path / "f", io.BytesIO())


def test_extract_applies_exclude(tree, tmp_path):
    stream = io.BytesIO()
    pack(tree, stream)
    stream.seek(0)
    assert extract(stream, tmp_path / "dest", exclude=EXCLUDE) == len(KEPT)
    assert sorted(snapshot(tmp_path / "dest")) == KEPT


def test_extract_reads_a_stream_that_cannot_seek(tree, tmp_path):
    data = io.BytesIO()
    pack(tree, data, exclude=EXCLUDE)
    read_fd, write_fd = os.pipe()

    def feed():
        with os.fdopen(write_fd, "wb") as writer:
            writer.write(data.getvalue())

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_fd, "rb") as reader:
        assert not reader.seekable()
        assert extract(reader, tmp_path / "dest") == len(KEPT)
    writer.join()
    check_tree(tmp_path / "dest", tree)


# -- hostile archives from the guest ---------------------------------------------------------
def regular(name, data=b"evil\n", mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def special(name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def directory(name, mode=0o755):
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, None


def archive(*members) -> io.BytesIO:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    stream.seek(0)
    return stream


@pytest.fixture
def jail(tmp_path):
    """An empty directory holding only the target: whatever escapes the target lands here."""
    (tmp_path / "jail").mkdir()
    return tmp_path / "jail"


HOSTILE = {
    "absolute name": (lambda jail: [regular(str(jail / "evil"))], "is an absolute path"),
    "dot-dot": (lambda jail: [regular("../evil")], "would land outside"),
    "dot-dot inside": (lambda jail: [regular("x/../../evil")], "would land outside"),
    "symlink to /etc": (lambda jail: [link("etc", "/etc")], "symlink to the absolute path '/etc'"),
    "symlink to the jail": (lambda jail: [link("j", str(jail))], "absolute path"),
    "symlink up": (lambda jail: [link("l", "../../x")], "points outside"),
    "symlink up from a subdirectory": (lambda jail: [link("d/l", "../../evil")], "points outside"),
    "symlink then through it": (lambda jail: [link("a", ".."), regular("a/evil")],
                                "points outside"),
    "a harmless symlink, then through it": (
        lambda jail: [directory("d"), link("d/up", ".."), regular("d/up/evil")],
        "its parent 'd/up' is a symlink"),
    "dot-dot after a name": (lambda jail: [link("l", "s/../../evil"), link("s", ".")],
                             "follows a name"),
    "hard link to /etc/passwd": (lambda jail: [link("p", "/etc/passwd", tarfile.LNKTYPE)],
                                 "hard link to '/etc/passwd'"),
    "hard link up": (lambda jail: [link("p", "../evil", tarfile.LNKTYPE)], "hard link"),
    "hard link ahead": (lambda jail: [link("p", "later", tarfile.LNKTYPE), regular("later")],
                        "has not written"),
    "fifo": (lambda jail: [special("f", tarfile.FIFOTYPE)], "a fifo"),
    "character device": (lambda jail: [special("null", tarfile.CHRTYPE)], "character device"),
    "block device": (lambda jail: [special("sda", tarfile.BLKTYPE)], "block device"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_member_is_refused_and_nothing_escapes(case, jail):
    members, reason = HOSTILE[case]
    members = members(jail)
    target = jail / "target"
    with pytest.raises(UnsafeArchive) as info:
        extract(archive(*members), target)
    assert isinstance(info.value, KvmError)
    assert str(info.value).startswith(f"refusing {info.value.member!r} from the guest: ")
    assert info.value.member in [m.name for m, _ in members]
    assert reason in str(info.value)
    assert os.listdir(jail) == ["target"]
    assert not any(p.name in ("evil", "p", "f", "null", "sda", "etc") for p in target.rglob("*"))


def test_refusal_names_the_target(jail):
    target = jail / "target"
    with pytest.raises(UnsafeArchive) as info:
        extract(archive(regular("x/../../etc/passwd")), target)
    assert str(info.value) == (f"refusing 'x/../../etc/passwd' from the guest: "
                               f"it would land outside {target}")


def test_symlink_already_on_disk_is_not_written_through(jail):
    outside = jail / "outside"
    outside.mkdir()
    target = jail / "target"
    target.mkdir()
    (target / "out").symlink_to(outside)
    with pytest.raises(UnsafeArchive, match="parent 'out' is a symlink"):
        extract(archive(regular("out/evil")), target)
    assert os.listdir(outside) == []


def test_existing_symlink_is_replaced_not_followed(jail):
    secret = jail / "secret"
    secret.write_text("keep\n")
    target = jail / "target"
    target.mkdir()
    (target / "victim").symlink_to(secret)
    assert extract(archive(regular("victim", b"new\n")), target) == 1
    assert secret.read_text() == "keep\n"
    assert not (target / "victim").is_symlink() and (target / "victim").read_text() == "new\n"


def test_setuid_is_dropped_and_root_member_changes_nothing(tmp_path):
    target = tmp_path / "dest"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    stream = archive(directory(".", mode=0o700), regular("./tool", b"#!/bin/sh\n", mode=0o4755),
                     directory("./shared", mode=0o3777))
    assert extract(stream, target) == 2
    assert stat.S_IMODE((target / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "shared").stat().st_mode) == 0o1777
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_symlinks_that_stay_inside_are_kept(tmp_path):
    stream = archive(directory("a"), directory("a/b"), regular("top"),
                     link("a/b/up", "../../top"), link("a/here", "./b"), link("a/dot", "."))
    assert extract(stream, tmp_path / "dest") == 6
    assert (tmp_path / "dest" / "a" / "b" / "up").read_text() == "evil\n"
    assert os.readlink(tmp_path / "dest" / "a" / "here") == "./b"


# -- the guest's commands --------------------------------------------------------------------
def test_remote_commands_quote_every_value():
    path = f"/srv/{ODD}"
    assert shlex.split(remote_pack_command(path, ["*.pyc", "a b", ".git/"])) == [
        "tar", "-c", "-f", "-", "-C", path,
        "--exclude=*.pyc", "--exclude=a b", "--exclude=.git", "."]
    assert shlex.split(remote_unpack_command(path)) == [
        "mkdir", "-p", "--", path, "&&",
        "tar", "-x", "-p", "--no-same-owner", "-f", "-", "-C", path]


def test_gnu_tar_pack_command_feeds_extract(tmp_path):
    src = make_tree(tmp_path / ODD)
    proc = subprocess.Popen(["sh", "-c", remote_pack_command(str(src), EXCLUDE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    count = extract(proc.stdout, tmp_path / "dest")
    assert proc.wait() == 0, proc.stderr.read()
    assert count == len(KEPT)
    check_tree(tmp_path / "dest", src)


def test_gnu_tar_unpack_command_reads_pack(tree, tmp_path):
    dest = tmp_path / "new" / ODD
    proc = subprocess.Popen(["sh", "-c", remote_unpack_command(str(dest))],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    pack(tree, proc.stdin, exclude=EXCLUDE)
    proc.stdin.close()
    assert proc.wait() == 0, proc.stderr.read()
    check_tree(dest, tree)


def test_gnu_tar_unpack_command_does_not_chown(tmp_path):
    info, data = regular("owned", b"x")
    info.uid = info.gid = 4242
    proc = subprocess.run(["sh", "-c", remote_unpack_command(str(tmp_path / "dest"))],
                          input=archive((info, data)).getvalue(), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dest" / "owned").stat().st_uid == os.geteuid()


def test_a_stream_that_never_ends_stops_at_the_limit_and_so_does_its_command(tmp_path):
    """Issue 23: an artifact that is a link to /dev/zero; the guest side cuts it one byte
    past the limit (the command ends by itself), the reader says it was over."""
    import io
    import shutil
    import subprocess

    from pytest_kvm.transport.archive import LimitedReader, OverLimit, bounded_command

    (tmp_path / "zero").symlink_to("/dev/zero")
    proc = subprocess.Popen(bounded_command(f"cat -- {tmp_path / 'zero'}", 100_000), shell=True,
                            stdout=subprocess.PIPE)
    with pytest.raises(OverLimit, match="more than 100000 bytes"):
        shutil.copyfileobj(LimitedReader(proc.stdout, 100_000), io.BytesIO())
    assert len(proc.stdout.read()) < 100_001  # what is left of the cut stream
    assert proc.wait(10) == 0
    small = LimitedReader(io.BytesIO(b"x" * 100), 100)
    assert small.read() == b"x" * 100 and small.read() == b""
