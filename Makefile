# agent-webkitd. `make run` and `make test` each do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint demo bench fuzz soak openapi clean

install: $(STAMP)

# Re-install whenever the project's metadata changes; otherwise this is a no-op.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: install
	$(BIN)/agent-webkitd --config conf/dev.toml

# The Postgres store's tests need PostgreSQL: start the local server if it is down
# (skipped when AGENT_WEBKITD_TEST_PG names another server); strace, promtool and
# systemd-analyze are installed from Debian's packages if missing.
test: install
	@test -n "$$AGENT_WEBKITD_TEST_PG" || scripts/ensure-postgres
	@scripts/ensure-test-tools
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check agent_webkitd tests bench
	$(BIN)/ruff format --check agent_webkitd
	$(BIN)/mypy

# The daemon with the SDK's real bundled Claude Code CLI, pointed at a local stand-in
# of the Anthropic Messages API: try the README's curl walkthrough without credentials.
demo: install
	$(BIN)/python -m tests.standin.demo

# agent-webkitd against agent-webkit-server 0.2.0 (installed into bench/.peer-venv on first
# use), side by side on loopback; `make bench ARGS=--quick` for a smoke run, ARGS=--no-scale
# to skip the 1000-session phase; ARGS="--only cost --cost-profile" for the daemon's CPU per
# event against the SDK alone, and where it goes (py-spy). Raw results go to bench/results/.
bench: install
	$(BIN)/python -m bench.run $(ARGS)

# Mixed load for 10 minutes (ARGS="--duration 60" for a short one); fails on a 5xx, a lost or
# repeated event, a leftover process, or memory or descriptors growing after the warm-up.
soak: install
	$(BIN)/python -m bench.soak $(ARGS)

# The hostile-input tests with 80x the examples `make test` runs (~5 min; EXAMPLES=N to choose).
fuzz: install
	AGENT_WEBKITD_FUZZ_EXAMPLES=$${EXAMPLES:-2000} $(BIN)/python -m pytest -q tests/test_fuzz.py tests/test_parsers.py

# The API description for integrators: conf/openapi.json, written from agent_webkitd/protocol/openapi.py
# (a test fails when it is out of date).
openapi: install
	$(BIN)/python -m agent_webkitd.protocol.openapi > conf/openapi.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
