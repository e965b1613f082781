import multiprocessing

from pytest_kvm.vm.hugepages import huge_pages_enabled, set_huge_pages


def _child_sees(queue):
    queue.put(huge_pages_enabled())


def child_sees() -> bool:
    """What a process started from here inherits (QEMU is forked by the embedded driver)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_sees, args=(queue,))
    child.start()
    child.join(10)
    return queue.get(timeout=5)


def test_huge_pages_off_for_children_and_back_on():
    before = huge_pages_enabled()
    try:
        assert set_huge_pages(False)
        assert not huge_pages_enabled() and not child_sees()
        assert set_huge_pages(True)
        assert huge_pages_enabled() and child_sees()
    finally:
        set_huge_pages(before)
