"""How a test talks to a running guest: the handle interface, SSH, WinRM, tree archives, command wrapping, and the entries other tools use (testinfra, ssh_config, Ansible)."""
