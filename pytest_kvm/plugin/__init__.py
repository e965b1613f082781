"""The pytest plugin (entry point ``pytest11: kvm``): hooks in :mod:`.hooks`, fixtures in
:mod:`.fixtures`. pytest registers this module, so it names both."""
from .fixtures import guest, guest_factory, guest_testinfra, kvm  # noqa: F401
from .hooks import (  # noqa: F401
    pytest_addoption, pytest_collection_modifyitems, pytest_configure, pytest_generate_tests,
    pytest_report_header, pytest_runtest_makereport, pytest_runtestloop, pytest_sessionfinish,
    pytest_sessionstart, pytest_terminal_summary, pytest_testnodedown, pytest_unconfigure)
