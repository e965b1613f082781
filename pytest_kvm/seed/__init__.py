"""The seed a guest reads at first boot: cloud-config, NoCloud and ConfigDrive ISOs, the Windows setup script."""
