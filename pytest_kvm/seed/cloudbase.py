"""The user data cloudbase-init runs in a Windows guest: our admin user and WinRM over HTTP.

The user data is a ``#ps1_sysnative`` PowerShell script; with the user's own
cloud-config, a MIME multipart of the script and that cloud-config. A script is text,
so every value in it is a PowerShell single-quoted literal made by :func:`ps_quote`,
never pasted in raw. What cloudbase-init does with each part, and what the script
changes in the guest and why, is in ``docs/design/seeds.md``.
"""
from __future__ import annotations

from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from ..commands import ps_quote

PS1_HEADER = "#ps1_sysnative"
ADMINISTRATORS_SID = "S-1-5-32-544"  # the built-in group, whatever its localised name
WINRM_HTTP_PORT = 5985
FIREWALL_RULE = "pytest-kvm WinRM HTTP"
# PowerShell ends a single-quoted string at any of these, so each is doubled inside one



def setup_script(user: str, password: str) -> str:
    """The PowerShell that creates *user* as a local administrator with *password*, lets
    local administrators use WinRM remotely, and opens WinRM over HTTP on port 5985.

    The handle authenticates with NTLM, whose messages pywinrm encrypts even over HTTP,
    so ``AllowUnencrypted`` and Basic auth stay off.
    """
    lines = [
        PS1_HEADER,
        "$ErrorActionPreference = 'Stop'",
        "$ProgressPreference = 'SilentlyContinue'",
        f"$user = {ps_quote(user)}",
        f"$password = ConvertTo-SecureString {ps_quote(password)} -AsPlainText -Force",
        "if (Get-LocalUser -Name $user -ErrorAction SilentlyContinue) {",
        "    Set-LocalUser -Name $user -Password $password -PasswordNeverExpires $true",
        "} else {",
        "    New-LocalUser -Name $user -Password $password -PasswordNeverExpires "
        "-AccountNeverExpires -Description 'pytest-kvm login' | Out-Null",
        "}",
        f"try {{ Add-LocalGroupMember -SID {ps_quote(ADMINISTRATORS_SID)} -Member $user }}",
        "catch [Microsoft.PowerShell.Commands.MemberExistsException] { }",
        "# without this, UAC gives a remote local administrator a filtered token and WinRM refuses it",
        "New-ItemProperty -Path 'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Policies\\System' "
        "-Name LocalAccountTokenFilterPolicy -Value 1 -PropertyType DWord -Force | Out-Null",
        "# QEMU's user network is an unidentified (Public) one, where WinRM's quickconfig stops",
        "try { Get-NetConnectionProfile | Where-Object NetworkCategory -eq 'Public' "
        "| Set-NetConnectionProfile -NetworkCategory Private } catch { }",
        "Enable-PSRemoting -Force -SkipNetworkProfileCheck | Out-Null",
        "Set-Service -Name WinRM -StartupType Automatic",
        f"if (-not (Get-NetFirewallRule -DisplayName {ps_quote(FIREWALL_RULE)} -ErrorAction SilentlyContinue)) {{",
        f"    New-NetFirewallRule -DisplayName {ps_quote(FIREWALL_RULE)} -Direction Inbound -Protocol TCP "
        f"-LocalPort {WINRM_HTTP_PORT} -Action Allow -Profile Any | Out-Null",
        "}",
        "Restart-Service -Name WinRM",
        "exit 0",  # 1001-1003 would ask cloudbase-init for a reboot or a rerun
    ]
    return "\r\n".join(lines) + "\r\n"


def user_data(user: str, password: str, *, cloud_config: bytes | None = None) -> bytes:
    """The whole ``user_data``: the setup script alone, or with the user's *cloud_config*
    (a serialised ``#cloud-config`` document) as a MIME multipart (script first)."""
    script = setup_script(user, password)
    if not cloud_config:
        return script.encode()
    multipart = MIMEMultipart()
    script_part = MIMEText(script, "x-shellscript", "utf-8")
    script_part.add_header("Content-Disposition", "attachment", filename="pytest-kvm.ps1")
    multipart.attach(script_part)
    config_part = MIMEText(cloud_config.decode(), "cloud-config", "utf-8")
    config_part.add_header("Content-Disposition", "attachment", filename="user-data.yaml")
    multipart.attach(config_part)
    return multipart.as_bytes()
