"""Warm clones: restoring a guest from a golden's saved state (its own name, disk, MAC and
port; its clock set again), and saving a ready guest as a golden (the plugin's, or a
user's with ``guest.freeze()``)."""
from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import time
from dataclasses import replace
from pathlib import Path

from ..errors import AgentCommandFailed, HypervisorError, KvmError
from ..files import writable
from ..hosts.base import GuestFiles
from ..vm.domain import NVRAM_FILE, CloneIdentity, retarget
from ..waiting import Timeline
from ..workdir import CONSOLE_FILE
from .golden import Golden
from .machine import Machine
from .ready import log_in_again

AGENT_WAIT = 5.0  # seconds a restored clone's guest agent may take to answer


def use_golden(m: Machine, golden: Golden) -> None:
    """*m* becomes a clone of *golden*: its host key, login key and credentials; its
    hostname unless this clone asked to be unique (then its own name)."""
    m.golden = golden
    m.hostname = m.name if m.config.unique else golden.hostname
    m.host_public = golden.host_public
    m.login_key_file = golden.login_key_file
    m.credentials = golden.credentials


def start_clone(m: Machine) -> None:
    """Restore *m* from its golden; if the golden came from the snapshot cache and its first
    clone fails, the session makes the golden anew (a stale cache never fails a test)."""
    golden = m.golden
    generation = golden.generation
    try:
        _restore(m, golden)
    except (KvmError, OSError, ValueError) as exc:  # ValueError: a damaged save image
        if golden.verified or golden.replace is None:
            raise
        m.remove()
        m.timeline = Timeline()
        golden.replace(exc, generation)
        use_golden(m, golden)
        _restore(m, golden)
    golden.verified = True


def _restore(m: Machine, golden: Golden) -> None:
    t0 = time.monotonic()
    cfg = m.config
    with writable(cfg.workdir.parent, f"preparing clone {m.name}"):
        cfg.workdir.mkdir(mode=0o700, parents=True)
        disk = m.host.clone_disk(m.name, golden, cfg.workdir)
        nvram = _copy_nvram(m, golden)
    identity = CloneIdentity(name=m.name, disk=disk, console_log=m.console,
                             ssh_port=0, guest_port=cfg.family.guest_port, nvram=nvram,
                             seed=golden.seed, metadata=dict(cfg.metadata),
                             network_mode=cfg.network_mode, shared_memory=bool(cfg.shares))
    m.mac = identity.mac
    # what freeze() reads: the clone's disk, and its golden's seed (the clone has none)
    m.files = GuestFiles(disk=disk, seed=golden.seed, kernel=None, initrd=None, console="")
    m.timeline.add("prepare", time.monotonic() - t0)
    t0 = time.monotonic()
    # the same domain booted cold again after a shutdown (its disk: this clone's overlay)
    m.xml_for_port = lambda port: retarget(golden.image.xml, replace(identity, ssh_port=port))
    m.start_on_free_port(lambda port: m.host.restore(
        m.name, golden, m.xml_for_port(port), cfg.workdir, m.console))
    m.timeline.add("restore", time.monotonic() - t0)
    wake(m, reseed=not cfg.arch.vm_genid)  # a VM generation ID's change reseeds by itself
    if cfg.unique:
        t0 = time.monotonic()
        m.handle.run(cfg.family.identity_command_for(m.hostname), timeout=120, check=True)
        m.timeline.add("identity", time.monotonic() - t0)


def wake(m: Machine, *, reseed: bool) -> None:
    """A guest whose memory was just loaded (a clone's restore, an in-place revert): log
    in again while its clock is set, then, where *reseed*, its kernel's random number
    generator reseeded (the family's ``reseed_command``): its state is the saved one."""
    cfg = m.config
    # the guest's clock stopped while it was saved: set it from the host's, through the
    # guest agent while we log in (else with the family's clock command afterwards)
    by_agent = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    agent_clock = by_agent.submit(clock_by_agent, m)
    by_agent.shutdown(wait=False)
    log_in_again(m, cfg.limits["ssh"])
    t0 = time.monotonic()
    try:
        agent_clock.result(timeout=AGENT_WAIT + 5)
        how = "set from the host's through the guest agent"
    except Exception as exc:  # no agent in this image (or it did not answer): log in and set it
        clock = cfg.family.clock_command_for(time.time())
        if clock is not None:
            m.handle.run(clock, timeout=60, check=True)
        how = (("set from the host's with the family's clock command" if clock is not None
                else "not set: the family has no clock command")
               + f" (not through the guest agent: {exc or type(exc).__name__})")
    m.timeline.add("clock", time.monotonic() - t0)
    m.log("clock %s", how)
    if reseed and cfg.family.reseed_command:
        t0 = time.monotonic()
        m.handle.run(cfg.family.as_root(cfg.family.reseed_command), timeout=60, check=True)
        m.timeline.add("reseed", time.monotonic() - t0)


def clock_by_agent(m: Machine, deadline: float = AGENT_WAIT) -> None:
    """Set the clock through the guest agent, retrying while it reconnects after the
    restore (not once it answered with a failure); each try reads the host's time anew."""
    end = time.monotonic() + deadline
    while True:
        if m.destroyed:  # a clone that failed meanwhile: its domain is gone
            raise HypervisorError(f"guest {m.name} was destroyed before its clock was set")
        try:
            return m.host.set_time(m.dom, time.time(), timeout=2)
        except AgentCommandFailed:
            raise  # it answered, with a failure: the family's clock command sets it
        except HypervisorError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def _copy_nvram(m: Machine, golden: Golden) -> Path | None:
    """A UEFI clone's own copy of its golden's variable store (None without UEFI)."""
    source = golden.directory / NVRAM_FILE
    if not source.exists():
        return None
    target = m.config.workdir / NVRAM_FILE
    shutil.copyfile(source, target)
    return target


ZERO_FREE_MEMORY_TIMEOUT = 120.0  # seconds; under TCG it takes 1-2 s for ~300 MiB


def zero_free_memory(m: Machine) -> None:
    """Fill *m*'s free memory with zeros before its save, where its family can (a failure
    costs only memory: the save is as good)."""
    command = m.config.family.zero_free_memory_command
    if command is None:
        return
    t0 = time.monotonic()
    try:
        done = m.handle.run(command, timeout=ZERO_FREE_MEMORY_TIMEOUT)
        m.log("free memory zeroed before the save (exit %s)", done.exit_code)
    except KvmError as exc:  # the save itself will say if the guest is gone
        m.log("free memory not zeroed before the save: %s", exc)
    m.timeline.add("zero-free-memory", time.monotonic() - t0)


def save_as_golden(m: Machine, key: str) -> Golden:
    """Save *m*'s ready guest and freeze its disk: it becomes a golden, whose directory is
    the guest's work directory."""
    zero_free_memory(m)
    t0 = time.monotonic()
    m.close_handle()
    image, host_files = m.host.save_golden(m.name, m.files, m.config.workdir)
    m.dom = None
    m.host.remove_qemu_log(m.name)  # its QEMU is gone; clones have logs of their own
    golden = Golden(key=key, directory=m.config.workdir, image=image, login_key=m.config.login_key,
                    host_public=m.host_public, hostname=m.hostname, credentials=m.credentials,
                    host_files=host_files)
    m.timeline.add("save", time.monotonic() - t0)
    return golden


def freeze_into(m: Machine, key: str, directory: Path, volume_prefix: str | None = None) -> Golden:
    """Save *m*'s guest as a golden in *directory* (on a remote host its big files are
    volumes named *volume_prefix*: see :meth:`Host.freeze`), independent of the guest's own
    files (a clone's disk is flattened onto the base image: it no longer needs its golden).
    The caller removes the guest afterwards."""
    t0 = time.monotonic()
    m.check_running("freeze")
    cfg = m.config
    if cfg.shares:
        raise KvmError(f"cannot freeze guest {m.name}: it has shares (QEMU cannot save a "
                       f"guest with virtiofs); give the clones the share instead")
    if cfg.networks:
        raise KvmError(f"cannot freeze guest {m.name}: it is on networks (their NICs are "
                       f"plugged into its QEMU only); give the clones networks= instead")
    m.close_handle()
    parent = m.golden
    image, host_files = m.host.freeze(m.name, m.files, cfg.image, parent, directory, volume_prefix)
    m.dom = None
    m.host.remove_qemu_log(m.name)
    console = b""
    if parent is not None:
        with contextlib.suppress(OSError):
            console = parent.console_log.read_bytes()
    with contextlib.suppress(OSError):
        console += m.console.read_bytes()
    (directory / CONSOLE_FILE).write_bytes(console)
    nvram = cfg.workdir / NVRAM_FILE
    if nvram.exists():
        shutil.copyfile(nvram, directory / NVRAM_FILE)
    golden = Golden(key=key, directory=directory, image=image,
                    login_key=parent.login_key if parent else cfg.login_key,
                    host_public=m.host_public, hostname=m.hostname, credentials=m.credentials,
                    host_files=host_files)
    m.timeline.add("freeze", time.monotonic() - t0)
    return golden
