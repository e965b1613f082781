"""Base images: names and recipes, the content-addressed cache, builds, downloads, qemu-img."""
