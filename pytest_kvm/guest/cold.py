"""A cold boot: the guest's own identity (host key, WinRM password), its seed and files on
its host, its domain started, and the wait until it is ready."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import HypervisorError
from ..files import writable
from ..keys import KeyPair
from ..seed import plain
from ..vm.domain import domain_xml, host_problems, random_mac
from .config import GuestConfig, domain_spec
from .machine import Machine
from .ready import wait_ready

if TYPE_CHECKING:
    from ..seed.iso import Seed


class ColdStart:
    """Boots *m*'s guest from its base image. The host key is made here and seeded, so the
    first login already checks it."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        cfg = m.config
        self._host_key = KeyPair.generate(f"{cfg.name}-host")
        m.host_public = self._host_key.public_openssh
        m.mac = random_mac()
        if cfg.family.transport == "winrm":  # a WinRM login has no key: the seed makes the user
            from ..transport.winrm import Credentials, require_pywinrm  # noqa: PLC0415
            require_pywinrm()  # before anything boots: pywinrm is the `winrm` extra
            m.credentials = Credentials.generate(cfg.user)
        m.xml_for_port = lambda port: domain_xml(self._spec(port))

    def _spec(self, port: int):
        return domain_spec(self.m.config, port, self.m.mac, self.m.files)

    def run(self) -> str | None:
        """Prepare, start, wait; returns the init's status (see :func:`.ready.wait_ready`)."""
        self._prepare()
        t0 = time.monotonic()
        self.m.start_on_free_port(self.m.start_domain)
        self.m.timeline.add("domain-start", time.monotonic() - t0)
        return wait_ready(self.m)

    def _prepare(self) -> None:
        m, t0 = self.m, time.monotonic()
        cfg = m.config
        fam = cfg.family
        # a bad user_data fails here, before any file is made
        guest_seed = seed_for(cfg, cfg.name, login_key=cfg.login_key, host_key=self._host_key,
                              password=m.credentials.password if m.credentials else None)
        problems = host_problems(self._spec(0))
        if problems:
            raise HypervisorError(f"cannot boot {m.name} ({cfg.os}, family {fam.name}): "
                                  + "; ".join(problems))
        with writable(cfg.workdir.parent, f"preparing guest {m.name}"):
            cfg.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            m.files = m.host.prepare(cfg.name, cfg.image, cfg.workdir, guest_seed,
                                     cfg.volume_prefix)
        m.timeline.add("prepare", time.monotonic() - t0)


def seed_for(cfg: GuestConfig, name: str, *, login_key: KeyPair, host_key: KeyPair,
             password: str | None = None) -> "Seed":
    """The seed of a cold boot of *cfg* named *name*: the family's user data (with the
    user's merged in) in the family's seed format, and the plain seed's files where its
    boot goes without cloud-init."""
    from ..seed import cloudinit, iso  # noqa: PLC0415 - PyYAML and pycdlib once a guest boots
    fam = cfg.family
    user_data = cloudinit.render_user_data(fam, login_key=login_key, host_key=host_key,
                                           password=password, extra=cfg.user_data)
    seed = iso.build_seed(cfg.seed_format or fam.seed_format, instance_id=name, hostname=name,
                          user_data=user_data, public_keys={"pytest-kvm": login_key.public_openssh})
    if cfg.plain_seed:
        seed = replace(seed, files={**seed.files, **plain.files(
            user=cfg.user, hostname=name, login_key=login_key, host_key=host_key)})
    return seed
