# Every target installs what it needs, so `make up` and `make test` work on a fresh Debian 12 machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# Debian packages the controller needs for the tests and the local test hosts (prometheus and
# prometheus-alertmanager for promtool and amtool, which check the alert rules and their tests).
APT_PACKAGES := python3-venv redis-server postgresql nginx-light openssl curl debootstrap systemd-container nftables zstd openssh-client iproute2 pebble prometheus prometheus-alertmanager

.PHONY: install system-deps lock run test

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml runtime/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ./runtime -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Writes PROJECT/requirements.lock, the hash-pinned lock a release is installed from: the
# dependencies of PROJECT/pyproject.toml and of the kit's runtime (runtime/pyproject.toml) in one
# resolution. Resolved by Debian 12's own python3, the interpreter the hosts run, so markers such
# as python_full_version match theirs. PROJECT defaults to this repository (the example app):
#   make lock PROJECT=/path/to/your/project
PROJECT ?= .
LOCK_VENV := .lock-venv
# The lock names no path of this controller (it is committed with the project): the header shows
# this make command, and the project's own pyproject.toml is named relative to the project.
lock: system-deps
	/usr/bin/python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q pip-tools
	CUSTOM_COMPILE_COMMAND="make lock PROJECT=<the project>" $(LOCK_VENV)/bin/pip-compile -q \
		--generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
		--output-file $(PROJECT)/requirements.lock $(PROJECT)/pyproject.toml runtime/pyproject.toml
	sed -i 's|$(abspath $(PROJECT))/||g' $(PROJECT)/requirements.lock

test: system-deps install
	$(VENV)/bin/pytest -ra --durations=20

# Local throw-away test hosts (systemd-nspawn, see tools/testhost); state lives in .testhosts/.
TESTHOST := tools/testhost
.PHONY: up down

# One command from a fresh machine to a deployed test host; run again, it re-deploys.
up: system-deps install
	$(TESTHOST) up
	ANSIBLE_CONFIG=deploy/ansible/ansible.cfg $(VENV)/bin/ansible-playbook -i .testhosts/inventory deploy/ansible/site.yml
	$(TESTHOST) check

down:
	$(TESTHOST) down

# The deployed stack against its peers on a fresh test host (bench/run.py; 15-20 min, not a test).
.PHONY: bench bench-deploy
bench: system-deps install
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) bench/run.py

# Only its provisioning rows (bench/deploy.py, a few minutes): bare host to HTTPS, site.yml again,
# deploy.yml of a code change, a rolling deploy.yml over 2 web hosts, each with its slowest tasks.
bench-deploy: system-deps install
	$(PY) bench/deploy.py

# The API (gunicorn on 127.0.0.1:$(PORT)), the scheduler daemon and a throw-away Redis, all in
# the foreground; Ctrl-C stops the three cleanly. Metrics are off unless API_METRICS_BIND (or
# SCHEDULER_METRICS_BIND) is in the environment, e.g. `make run API_METRICS_BIND=127.0.0.1:9180`.
run: system-deps install
	$(PY) scripts/run_local.py --port $(PORT)

# The Vagrantfile, really run (tools/vagrant-vm): a box built here from the test hosts' Debian 12
# rootfs (no download), `vagrant up` with libvirt (KVM where it works, else TCG) provisioning with
# site.yml like an operator's, then the end-to-end checks below against the VM (E2E_INVENTORY);
# afterwards nothing of the VM is left in libvirt. Its own target, not a pytest marker: the suite
# must start with the VM's inventory in its environment. `make vagrant-down` cleans up by hand.
VAGRANT_APT_PACKAGES := vagrant vagrant-libvirt libvirt-daemon-system qemu-system-x86 qemu-utils dnsmasq-base fdisk grub-pc-bin python3-yaml
VAGRANT_E2E_TESTS := provisions_a_bare_host or fast_runtime or restart_under_load or sandboxed or only_ssh_http_https or vagrantfile
.PHONY: vagrant-deps vagrant-e2e vagrant-down

vagrant-deps:
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(VAGRANT_APT_PACKAGES)"

vagrant-e2e: system-deps install vagrant-deps
	tools/vagrant-vm up || { tools/vagrant-vm down; exit 1; }
	eval "$$(tools/vagrant-vm env)" && $(VENV)/bin/pytest -ra tests/e2e/test_site*.py tests/e2e/test_vagrant.py \
		-k "$(VAGRANT_E2E_TESTS)"; status=$$?; tools/vagrant-vm down && exit $$status

vagrant-down:
	tools/vagrant-vm down
