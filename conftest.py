"""Root conftest of the pytest-kvm repository (the plugin itself is loaded through its
``pytest11`` entry point, as in any project that installs it)."""

pytest_plugins = ["pytester"]
