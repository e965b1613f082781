"""Where guests run: this machine or a remote libvirt host (``--kvm-host``), and how their files and ports are reached."""
