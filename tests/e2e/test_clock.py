"""A warm clone's clock after its restore: set from the host's through the QEMU guest agent,
or, when no agent answers, with the family's clock command over SSH.

Each path gets a user golden whose clock was set to 2001 before it was saved, so a clone whose
clock nobody set would still be in 2001 (a golden saved a moment ago would be too close to the
host's time to tell). The restore logs which way it set the clock; the guest's journal shows
whether the clock command ran in it (sudo logs each command)."""
import logging
import time

WRONG_EPOCH = 1_000_000_000  # 2001-09-09
MARK = "golden saved in 2001"  # logged by the guest (the command that logs it reads "$(date +%Y)")


def golden_in_2001(kvm, agent: bool):
    """A user golden (kept in the snapshot cache) whose clock reads 2001, with the guest
    agent running or stopped."""
    def prepare(g):
        if not agent:  # started by udev when its port appears, which a restore does not redo
            g.run("systemctl stop qemu-guest-agent", sudo=True, check=True)
        g.run(f"date -s @{WRONG_EPOCH} >/dev/null && logger -t clocktest \"golden saved in $(date +%Y)\"",
              sudo=True, check=True)
    return kvm.golden(f"clock-2001-{'agent' if agent else 'no-agent'}", prepare, os="debian-12")


def clone_and_read_clock(kvm, golden, caplog):
    """A clone of *golden*: (its clock's error in seconds, the clock log line, the sudo
    commands that set the clock since the golden was saved)."""
    caplog.set_level(logging.INFO, logger="pytest_kvm.guest")
    # unique: the clone starts here, in this thread (none is made ahead for the next test)
    with kvm.boot(golden=golden, unique=True) as g:
        error = abs(float(g.run("date +%s.%N", check=True).stdout) - time.time())
        journal = g.run("journalctl -q --no-pager -o cat -t clocktest -t sudo", sudo=True,
                        check=True).stdout
        phases = [phase for phase, _ in g.timeline.entries]
        said = [r.getMessage() for r in caplog.records
                if r.name == f"pytest_kvm.guest.{g.name}" and r.getMessage().startswith("clock ")]
    assert MARK in journal, journal
    after = journal.rsplit(MARK, 1)[1]
    clock_commands = [line for line in after.splitlines() if "date -u -s @" in line]
    assert "clock" in phases
    assert len(said) == 1, said
    return error, said[0], clock_commands


def test_clone_clock_is_set_through_the_guest_agent(kvm, caplog):
    error, said, clock_commands = clone_and_read_clock(kvm, golden_in_2001(kvm, agent=True), caplog)
    assert said == "clock set from the host's through the guest agent"
    assert clock_commands == []  # no login was needed for it
    assert error < 5


def test_clone_clock_falls_back_to_the_clock_command_without_an_agent(kvm, caplog):
    error, said, clock_commands = clone_and_read_clock(kvm, golden_in_2001(kvm, agent=False), caplog)
    assert said.startswith("clock set from the host's with the family's clock command "
                           "(not through the guest agent: "), said
    assert len(clock_commands) == 1, clock_commands  # `sudo -n date -u -s @EPOCH` ran in the guest
    assert error < 5
