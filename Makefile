# `make test` / `make run` work from a fresh clone: the first use builds .venv from
# requirements.lock and installs the system libraries (see BUILD.md).

PYTHON ?= python3.11
UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
SYSDEPS := libosmesa6 libgl1 chromium
# MuJoCo renders offscreen through OSMesa on machines without a display.
GL_ENV := MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa

# `make run`: demos of the nominal task -> BC beachhead -> actor-learner RL on local Ray.
# Each stage is skipped when its output exists, and `train` resumes a run directory.
# `train` serves the live dashboard while it runs and prints `dashboard: http://...`
# (add --no-dashboard or --dashboard-port N to TRAIN_ARGS to change that).
DEMOS ?= runs/demos-nominal-50
BC_RUN ?= runs/bc-diffusion
RUN_DIR ?= runs/main
CLI := $(VENV)/bin/ada-curriculum
# RL on the `near` box around the demonstrated placement: the BC policy solves part of it, so
# sparse reward has signal; a held-out evaluation at the start and every 1000 updates shows the
# change. Episodes are cut at 80 steps (the demos take ~55) so failures cost less acting time.
# Actors sample with 5 DDIM steps: no measured loss in success, and the actor keeps up with
# env-only stepping (bench/RESULTS.md, actor_throughput). The success critic is what makes the
# reward count: acting executes its best of 8 sampled chunks (bench/RESULTS.md, session 6).
TRAIN_ARGS ?= --tasks near --time-limit 80 --demo-fraction 0.25 --envs-per-actor 8 --acting-inference-steps 5 \
	--diffusion.critic-hidden 256 --diffusion.num-candidates 8 \
	--max-minutes 15 --max-updates 100000 \
	--eval-every 1000 --eval-episodes 60

PYTEST_ARGS ?=
# `make bench`: the throughput benchmarks. The others are half-hour-plus training experiments
# (curriculum_run, rl_vs_control, self_imitation, critic_dip, critic_start), run on their own
# (`make bench BENCH=bench/rl_vs_control.py`); heading_bins reads evaluations, it measures nothing.
BENCH ?= $(addprefix bench/,env_throughput.py actor_throughput.py learner_feed.py policy_speed.py)

.PHONY: run test bench sysdeps venv clean

run: sysdeps $(STAMP)
	@test -f $(DEMOS)/manifest.json || $(GL_ENV) $(CLI) collect --tasks nominal --episodes 50 --out $(DEMOS)
	@test -f $(BC_RUN)/summary.json || $(GL_ENV) $(CLI) pretrain --policy diffusion --demos $(DEMOS) \
	    --out $(BC_RUN) --updates 1500 --batch-size 128 --optim.decay-steps 1500
	$(GL_ENV) $(CLI) train --run $(RUN_DIR) --init $(BC_RUN) --demos $(DEMOS) $(TRAIN_ARGS)

# pytest exits 5 when it collects nothing; that is a failure here, with a clear message.
test: sysdeps $(STAMP)
	@rc=0; $(GL_ENV) $(PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	exit $$rc

bench: sysdeps $(STAMP)
	@set -e; for f in $(BENCH); do \
	  [ -e "$$f" ] || continue; \
	  echo "== $$f"; $(GL_ENV) $(PY) "$$f"; \
	done

venv: $(STAMP)

# uv is pinned and installed into the venv itself, so only python3.11 must pre-exist.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) --no-deps -e .
	touch $@

sysdeps:
	@if dpkg -s $(SYSDEPS) >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
	  echo "error: missing system packages ($(SYSDEPS)); run 'sudo make sysdeps' or: sudo apt-get install -y --no-install-recommends $(SYSDEPS)" >&2; \
	  exit 1; \
	fi; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SYSDEPS)

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
