import greet


def test_greeting():
    assert greet.greeting("guest") == "Hello, guest!"


def test_runs_on_linux():
    assert greet.where() == "Linux"


def test_installed_not_imported_from_the_tree():
    assert "site-packages" in greet.__file__
