"""tools/testhost's parts, by concern; tools/vagrant-vm builds its box on the same rootfs."""
