# sensu-plugins-kvm: `make run` and `make test` each set up everything they need (Debian 12, root).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
URI ?= test:///default
BIN := $(VENV)/bin
# Debian packages the package itself needs (libvirt-python is built against libvirt-dev).
DEB_BUILD := gcc pkg-config libvirt-dev python3-dev python3-venv
# libnbd's Python binding (kvm-backup reads disks over NBD through libvirt's backup API) is only
# Debian's python3-libnbd (PyPI has none): its two files are linked into the venv, nothing else of
# the system's dist-packages (docs/decisions.md, issue 17). Same CPython ABI as the venv's 3.11.
DEB_NBD := python3-libnbd
NBD_DIST := /usr/lib/python3/dist-packages
# Debian packages only the tests use: busybox (its sh runs the Sensu Go asset's wrappers) and
# duktape (runs the polkit rule, as polkitd does).
DEB_TEST := busybox duktape

.PHONY: run test setup lint unit bench wiring clean

run: setup
	@echo "== check-kvm-domstate -u $(URI) -v" >&2
	@$(BIN)/check-kvm-domstate -u '$(URI)' -v; status=$$?; \
	  echo "== exit status $$status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)" >&2

setup: $(VENV)/.installed

# The venv and the test tools, once; the package itself (a regular install, not editable, so that
# the tests run what an operator installs) again whenever a source file changes.
$(VENV)/.deps: setup.cfg pyproject.toml
	@bash packaging/install-debs.sh $(DEB_BUILD)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	@$(BIN)/pip install -q '.[test]'
	@touch $@

$(VENV)/.nbd: $(VENV)/.deps
	@bash packaging/install-debs.sh $(DEB_NBD)
	@mkdir -p $(VENV)/lib/debian-nbd
	@ln -sf $(NBD_DIST)/nbd.py $(NBD_DIST)/libnbdmod.cpython-*.so $(VENV)/lib/debian-nbd/
	@echo $(abspath $(VENV))/lib/debian-nbd > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/debian-nbd.pth"
	@$(BIN)/python -c 'import nbd; nbd.NBD()' || { echo "python3-libnbd does not load in $(VENV) (another Python ABI?)" >&2; exit 1; }
	@touch $@

$(VENV)/.installed: $(VENV)/.deps $(VENV)/.nbd $(shell find src checks handlers -name '*.py' 2>/dev/null) README.md
	@rm -rf build  # setuptools' build/lib would carry modules that were moved or removed into the wheel
	@$(BIN)/pip install -q --no-deps --force-reinstall .
	@$(BIN)/check-kvm-domstate --version >/dev/null
	@touch $@

# The real-hypervisor tests need libvirtd; the daemons the rig starts are stopped afterwards. The
# hypervisor tier runs last: its session guests (a spinning vCPU, a disk writer) would otherwise
# take most of the two cores from every tier after it (measured: the unit and test-driver tiers,
# 3 minutes alone, took over 10 behind it). tests/testdriver/test_makefile.py checks the list.
TIERS := tests/unit tests/testdriver tests/services tests/hypervisor
test: setup
	@bash packaging/install-debs.sh $(DEB_TEST)
	$(BIN)/ruff check .
	$(BIN)/mypy src checks handlers tests
	@bash tests/rig/host-setup.sh
	@bash tests/services/setup.sh
	@status=0; $(BIN)/pytest -q -ra --durations=40 $(TIERS) || status=$$?; bash tests/rig/host-teardown.sh; exit $$status

unit: setup
	$(BIN)/pytest -q tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy src checks handlers tests

bench: setup
	@bash tests/rig/host-setup.sh
	@bash tests/services/setup.sh
	@status=0; $(BIN)/python bench/bench_domstate.py && $(BIN)/python bench/bench_resources.py \
	  && $(BIN)/python bench/bench_backup.py && $(BIN)/python bench/bench_backup_chain.py \
	  && $(BIN)/python bench/bench_scale.py --runs 3 --guests 20,50 \
	  || status=$$?; \
	  bash tests/rig/host-teardown.sh; exit $$status

# setup.cfg's console_scripts, conf.d/ (the commands' files), packaging/sensu-go/checks.yaml and
# handlers.yaml, packaging/icinga2/ and packaging/nagios/, and the README's command table, from
# src/sensu_kvm/registry.py (the checkout's, not the installed one); then the package is installed
# again with the new entry points.
wiring: $(VENV)/.deps
	PYTHONPATH=src $(BIN)/python -m sensu_kvm.wiring
	@$(MAKE) --no-print-directory setup

clean:
	rm -rf $(VENV) build *.egg-info
