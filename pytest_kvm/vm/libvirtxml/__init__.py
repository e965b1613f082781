"""libvirt's XML documents as objects that parse and format: domains and their devices,
storage pools and volumes (no libvirt import; each piece testable alone)."""
