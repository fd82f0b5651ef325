"""tools/vagrant-vm's parts, by concern; the rootfs and host helpers come from testhost_lib."""
