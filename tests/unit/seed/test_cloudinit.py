import pytest

from pytest_kvm.seed import cloudinit
from pytest_kvm.commands import CommandSpecError
from pytest_kvm.errors import SeedError


def test_merge_dicts_recursively_lists_appended_scalars_replaced():
    base = {"a": {"x": 1, "y": [1]}, "l": [1], "s": "old"}
    merged = cloudinit.merge(base, {"a": {"y": [2], "z": 3}, "l": [2], "s": "new", "n": None})
    assert merged == {"a": {"x": 1, "y": [1, 2], "z": 3}, "l": [1, 2], "s": "new", "n": None}
    assert base == {"a": {"x": 1, "y": [1]}, "l": [1], "s": "old"}  # untouched


def test_user_users_are_added_not_replacing_ours():
    from pytest_kvm.keys import KeyPair
    from pytest_kvm.families import family
    data = yaml.safe_load(cloudinit.render_user_data(
        family("linux"), login_key=KeyPair.generate("l"), host_key=KeyPair.generate("h"),
        extra={"users": [{"name": "alice"}]}))
    assert [u["name"] for u in data["users"]] == [cloudinit.LOGIN_USER, "alice"]


def test_unserialisable_user_data_is_a_seed_error():
    with pytest.raises(SeedError, match="cannot be serialised"):
        cloudinit.dump_cloud_config({"runcmd": [object()]})


def test_unserialisable_meta_data_names_what_it_is():
    with pytest.raises(SeedError, match="meta-data cannot be serialised"):
        cloudinit.dump_yaml({"x": object()}, "meta-data")


def test_seed_modules_import_one_way():
    # families <- cloudinit -> cloudbase, and iso -> cloudinit: no cycle, no import in a function
    import ast
    import pathlib

    import pytest_kvm
    package = pathlib.Path(pytest_kvm.__file__).parent
    imported = {}
    paths = {"families": "families.py", "cloudinit": "seed/cloudinit.py",
             "cloudbase": "seed/cloudbase.py", "iso": "seed/iso.py",
             "commands": "commands.py"}
    for name, path in paths.items():
        tree = ast.parse((package / path).read_text())
        top = {node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))}
        assert all(node in top for node in ast.walk(tree)
                   if isinstance(node, (ast.Import, ast.ImportFrom))), f"{name}: a lazy import"
        imported[name] = {(alias.name if node.module is None else node.module).split(".")[0]
                          for node in top if isinstance(node, ast.ImportFrom) and node.level
                          for alias in node.names}
        assert "TYPE_CHECKING" not in (package / path).read_text(), name
    assert not imported["families"] & {"cloudinit", "cloudbase", "iso", "seed"}
    assert not imported["cloudbase"] & {"cloudinit", "families", "iso"}
    assert "iso" not in imported["cloudinit"]


def test_cloud_config_header_and_yaml():
    out = cloudinit.dump_cloud_config({"write_files": [{"path": "/x", "content": "a: 'b'\n"}]})
    assert out.startswith(b"#cloud-config\n")
    import yaml
    assert yaml.safe_load(out)["write_files"][0]["content"] == "a: 'b'\n"


# -- per-family user data -------------------------------------------------------------------
import yaml  # noqa: E402

from pytest_kvm.seed import cloudbase  # noqa: E402
from pytest_kvm.families import FAMILIES, family  # noqa: E402
from pytest_kvm.keys import KeyPair  # noqa: E402

LOGIN, HOST = KeyPair.generate("login"), KeyPair.generate("host")


def test_linux_user_data_unchanged_by_the_family_path():
    rendered = cloudinit.render_user_data(family("linux"), login_key=LOGIN, host_key=HOST,
                                          extra={"runcmd": ["true"]})
    plugin_defaults = cloudinit.plugin_user_data(LOGIN, HOST)  # bash, sudo: what Linux has
    assert rendered == cloudinit.dump_cloud_config(cloudinit.merge(plugin_defaults, {"runcmd": ["true"]}))
    assert yaml.safe_load(rendered)["users"][0]["shell"] == "/bin/bash"


def test_bsd_user_gets_sh_and_the_right_to_become_root():
    freebsd = yaml.safe_load(cloudinit.render_user_data(family("freebsd"), login_key=LOGIN, host_key=HOST))
    user = freebsd["users"][0]
    assert user["shell"] == "/bin/sh"
    # FreeBSD base has no sudo: its privilege tool is su, which lets members of wheel through
    assert user["groups"] == ["wheel"] and "sudo" not in user and "write_files" not in freebsd
    openbsd = yaml.safe_load(cloudinit.render_user_data(family("openbsd"), login_key=LOGIN, host_key=HOST,
                                                        extra={"write_files": [{"path": "/x"}]}))
    assert "sudo" not in openbsd["users"][0] and "groups" not in openbsd["users"][0]
    assert openbsd["write_files"][0] == {"path": "/etc/doas.conf", "content": "permit nopass pytest\n",
                                         "owner": "root:wheel", "permissions": "0600", "append": True}
    assert openbsd["write_files"][1] == {"path": "/x"}  # the user's files are added, not replacing
    assert openbsd["ssh_keys"]["ed25519_public"] == HOST.public_openssh


def test_every_family_seed_grants_its_privilege_tool():
    for fam in FAMILIES.values():
        if fam.user_data_format != "cloud-config":
            continue
        data = yaml.safe_load(cloudinit.render_user_data(fam, login_key=LOGIN, host_key=HOST))
        user = data["users"][0]
        granted = {"sudo": "sudo" in user, "su": "wheel" in user.get("groups", []),
                   "doas": any(f["path"] == "/etc/doas.conf" for f in data.get("write_files", []))}
        assert [tool for tool, yes in granted.items() if yes] == [fam.privilege], fam.name


def test_unknown_privilege_tool_is_refused():
    with pytest.raises(ValueError, match="pfexec"):
        cloudinit.plugin_user_data(LOGIN, HOST, privilege="pfexec")


def test_windows_user_data_is_a_cloudbase_script_with_the_password():
    rendered = cloudinit.render_user_data(family("windows"), login_key=LOGIN, host_key=HOST,
                                          password="Pa55-word")
    text = rendered.decode()
    assert text.startswith("#ps1_sysnative\r\n")
    assert "$user = 'pytest'" in text
    assert "ConvertTo-SecureString 'Pa55-word' -AsPlainText -Force" in text
    assert "LocalAccountTokenFilterPolicy" in text and "-LocalPort 5985" in text
    assert "AllowUnencrypted" not in text  # NTLM encrypts; Basic stays off
    assert "S-1-5-32-544" in text  # the Administrators group by SID, not its localised name
    with pytest.raises(SeedError, match="password"):
        cloudinit.render_user_data(family("windows"), login_key=LOGIN, host_key=HOST)


def test_powershell_quoting_cannot_be_escaped():
    assert cloudbase.ps_quote("a'b") == "'a''b'"
    assert cloudbase.ps_quote("a\u2019b") == "'a\u2019\u2019b'"  # PowerShell's typographic quotes
    assert cloudbase.ps_quote("$(rm -r C:\\)") == "'$(rm -r C:\\)'"  # verbatim: no expansion
    script = cloudbase.setup_script("o'brien", "x'; Remove-Item C:\\ -Recurse; '")
    assert "$user = 'o''brien'" in script
    assert "'x''; Remove-Item C:\\ -Recurse; '''" in script
    with pytest.raises(CommandSpecError):
        cloudbase.ps_quote("nul\x00")


def test_windows_user_data_with_user_cloud_config_is_multipart():
    import email
    rendered = cloudinit.render_user_data(family("windows"), login_key=LOGIN, host_key=HOST,
                                          password="pw", extra={"runcmd": ["echo hi"]})
    message = email.message_from_bytes(rendered)
    assert message.is_multipart()
    script, config = message.get_payload()
    assert script.get_content_type() == "text/x-shellscript"
    assert script.get_filename() == "pytest-kvm.ps1"  # cloudbase-init runs a part by its extension
    assert script.get_payload(decode=True).decode().startswith("#ps1_sysnative")
    assert config.get_content_type() == "text/cloud-config"
    assert yaml.safe_load(config.get_payload(decode=True)) == {"runcmd": ["echo hi"]}
