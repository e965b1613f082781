"""The libvirt connection and what it is given: domain XML, save images, acceleration."""
