# tandem: two commands do everything on a fresh machine.
#   make run    venv + demo data/model (if missing) + build + embedded server on 127.0.0.1:50051
#   make test   venv + test data + buf lint + fmt + clippy + the whole test suite + the image check
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the tests and benchmarks start (redis-server, h2load): root installs them
# directly, anyone else through sudo.
APT := $(if $(filter 0,$(shell id -u)),,sudo )apt-get
TOOLS := .tools
BUF_VERSION := 1.59.0
LISTEN ?= 127.0.0.1:50051
DEMO_ITEMS ?= 50000
# Served ranking model under data/demo/models: ranker (MLP) or seqranker (multi-input).
MODEL ?= ranker
# Lazily expanded: the wheel is installed by the time a recipe uses it.
# Resolved by the shell when a recipe runs: make caches directory listings, so a $(wildcard)
# can miss files that an earlier recipe of the same run (the venv install) created.
ORT_DYLIB_PATH = $$(ls $(CURDIR)/$(VENV)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1)
PIPELINE_SRC := $(wildcard models/tandem_pipeline/*.py)

.PHONY: redis-server redis-cost eval eval-online loadtest soak helm-test help run run-split run-gpu gpu-venv build data test-data test lint buf-lint bench bench-e2e bench-e2e-h2load bench-ann bench-ann-large bench-ann-synthetic bench-ranking bench-ranking-gpu train-from-served clean

help:
	@echo "make run        start tandem (embedded) on $(LISTEN) with the demo catalog and model"
	@echo "make run-split  the same as three processes: retrieval :50052, ranking :50053, gateway :50051"
	@echo "make test       run every check and test"
	@echo "make data       (re)generate the demo data: DEMO_ITEMS=1000000 for the large catalog"
	@echo "make eval       tandem beside the baselines, offline: Online Retail (CUTOFF=$(CUTOFF)) and the demo world"
	@echo "make eval-online  the live service on Online Retail, scored like the offline report"
	@echo "make run DATASET=online-retail  serve the real-data world (CUTOFF=YYYY-MM-DD, LISTEN=host:port)"
	@echo "make bench      criterion benches of the hot paths (cargo bench)"
	@echo "make loadtest   throughput at p99 <= 10/50 ms (tandem-load): demo and 1M, embedded and split"
	@echo "make soak       a million distinct users against the gateway's user-state budget (tandem-load)"
	@echo "make redis-cost Recommend latency and CPU with user state on Redis vs in memory (tandem-load)"
	@echo "make helm-test  lint, render and validate the Helm chart offline (part of make test)"
	@echo "make bench-e2e  embedded Recommend server CPU vs its stages (demo and 1M catalogs)"
	@echo "make bench-e2e-h2load  the release gateway binary from outside (h2load): server CPU per Recommend and Health"
	@echo "make bench-ann  retrieval vs hnswlib vs faiss on the 50k demo catalog (bench-ann-large: 1M;"
	@echo "                bench-ann-synthetic: two other shapes; VECTORS=file: your own vectors)"
	@echo "make bench-ranking  ranking rows/s and latency vs the Python onnxruntime floor"
	@echo "make bench-ranking-gpu  the same on the CUDA provider (GPU node; GPU_REQUIREMENTS picks the CUDA major)"
	@echo "make run-gpu    make run with the CUDA execution provider (onnxruntime-gpu wheel, --features cuda)"

$(VENV)/.installed: models/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r models/requirements.txt
	touch $@

# The side-by-side comparison with the baselines costs minutes on 50,000 items: `make eval`
# runs it; the test world (below) runs it on every `make test`.
data/demo/eval.json: $(VENV)/.installed $(PIPELINE_SRC)
	cd models && ../$(PY) -W ignore -m tandem_pipeline --out ../data/demo --items $(DEMO_ITEMS) --compare-users 0

# The real-data world: UCI Online Retail, trained before CUTOFF, evaluated after it.
CUTOFF ?= 2011-11-01
RETAIL := data/online-retail-$(CUTOFF)
$(RETAIL)/eval.json: $(VENV)/.installed $(PIPELINE_SRC) models/datasets/online-retail/online_retail.parquet
	cd models && ../$(PY) -W ignore -m tandem_pipeline --out ../$(RETAIL) --dataset online-retail --cutoff $(CUTOFF)

# Offline evaluation beside the baselines: the real data and the synthetic demo world.
eval: $(RETAIL)/eval.json
	cd models && ../$(PY) -W ignore -m tandem_pipeline --out ../data/demo-eval --items $(DEMO_ITEMS)

# Small world for the tests: seconds to generate, same code path.
data/test/eval.json: $(VENV)/.installed $(PIPELINE_SRC)
	cd models && ../$(PY) -W ignore -m tandem_pipeline --out ../data/test --items 3000 --eval-users 500
	cd models && ../$(PY) -W ignore -m tandem_pipeline.fixtures --data ../data/test

# Online equals offline: the live gateway on the real-data world, train purchases replayed
# through RecordEventStream (cutoff shifted to now), Recommend for every test customer, the
# offline metrics on the answers; fails beyond a 2 % gap.
$(VENV)/.online-installed: $(VENV)/.installed models/requirements-online.txt
	$(VENV)/bin/pip install --quiet -r models/requirements-online.txt
	touch $@

eval-online: $(VENV)/.online-installed $(RETAIL)/eval.json build
	cd models && ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) ../$(PY) -W ignore -m tandem_pipeline.online \
		--world ../$(RETAIL) --cutoff $(CUTOFF) --addr 127.0.0.1:50061 -- \
		../target/release/tandem-gateway --listen 127.0.0.1:50061 \
		$(subst $(RETAIL),../$(RETAIL),$(RETAIL_FLAGS))

data: data/demo/eval.json
test-data: data/test/eval.json

build:
	cargo build --release --bins

# DATASET=online-retail serves the real-data world (built if missing: trained before CUTOFF)
# with the model its evaluation recommends; ids are the shop's StockCode and CustomerID.
DATASET ?= demo
ifeq ($(DATASET),online-retail)
RUN_WORLD := $(RETAIL)
RUN_FLAGS = $(RETAIL_FLAGS)
else ifeq ($(DATASET),demo)
RUN_WORLD := data/demo
RUN_FLAGS = --items data/demo/items.parquet --model-dir data/demo/models/$(MODEL)
else
$(error DATASET must be demo or online-retail, got $(DATASET))
endif
# How the real-data world is served: the history ranker with the candidate sources and query it
# was trained with (30-day query half-life over 200 events; 100 related items).
RETAIL_FLAGS = --items $(RETAIL)/items.parquet --model-dir $(RETAIL)/models/history-ranker \
	--query-half-life-hours 720 --query-max-events 200 --history-capacity 200 \
	--related-candidates 100 --related-half-life-days 30 --own-item-candidates 1000 \
	--trending-half-life-min 1440

run: $(VENV)/.installed $(RUN_WORLD)/eval.json build
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) ./target/release/tandem-gateway --listen $(LISTEN) \
		$(RUN_FLAGS) --state-dir $(RUN_WORLD)/state --event-log-dir $(RUN_WORLD)/state/events \
		--served-log-dir $(RUN_WORLD)/state/served

run-split: $(VENV)/.installed data/demo/eval.json build
	export ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) TANDEM_ITEMS=data/demo/items.parquet; \
	./target/release/tandem-retrieval --listen 127.0.0.1:50052 --state-dir data/demo/state & r=$$!; \
	./target/release/tandem-ranking --listen 127.0.0.1:50053 --model-dir data/demo/models/$(MODEL) & k=$$!; \
	trap "kill $$r $$k" EXIT; \
	./target/release/tandem-gateway --listen $(LISTEN) --retrieval-addr 127.0.0.1:50052 --ranking-addr 127.0.0.1:50053

$(TOOLS)/node_modules/.bin/buf:
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

buf-lint: $(TOOLS)/node_modules/.bin/buf
	cd proto && ../$(TOOLS)/node_modules/.bin/buf lint

lint: buf-lint
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# The Helm chart, offline: lint, render every shape, validate against the Kubernetes schemas.
$(VENV)/.helm-installed: $(VENV)/.installed helm/requirements-test.txt
	$(VENV)/bin/pip install --quiet -r helm/requirements-test.txt
	touch $@

helm-test: $(VENV)/.helm-installed
	$(PY) helm/tests/test_chart.py

# Tests start a real redis-server (Debian's package) on loopback ports.
redis-server:
	command -v redis-server >/dev/null || ($(APT) update -q && $(APT) install -y -q redis-server)

test: $(VENV)/.installed data/test/eval.json data/demo/eval.json lint helm-test redis-server
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) TANDEM_TEST_DATA=$(abspath data/test) \
		TANDEM_DEMO_DATA=$(abspath data/demo) \
		TANDEM_PYTHON=$(abspath $(PY)) cargo test --workspace
	TANDEM_TEST_DATA=$(abspath data/test) $(PY) .ci/test_image.py
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) $(PY) load-tests/loadtest.py --quick --bin-dir target/debug \
		--catalog test --topology embedded --workload hot --rps 100 --seconds 5 --max-p99 50

bench:
	cargo bench --workspace

# Throughput at p99 <= 10 ms and <= 50 ms: demo and 1M catalogs, embedded and split, driven by
# tandem-load from outside; tables and every step in load-tests/results/.
loadtest: $(VENV)/.installed data/demo/eval.json data/large/eval.json
	cargo build --release --bins --locked
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) $(PY) load-tests/loadtest.py

# Recommend latency and CPU with user state on Redis against in memory, from outside.
redis-cost: $(VENV)/.installed data/demo/eval.json redis-server
	cargo build --release --bins --locked
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) $(PY) load-tests/state/redis_cost.py

# Memory under a million distinct users against the gateway's user-state budget, from outside.
soak: $(VENV)/.installed data/demo/eval.json
	cargo build --release --bins --locked
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) $(PY) load-tests/soak/soak_users.py

$(VENV)/.bench-installed: $(VENV)/.installed load-tests/ann/requirements.txt
	$(VENV)/bin/pip install --quiet -r load-tests/ann/requirements.txt
	touch $@

data/large/eval.json: $(VENV)/.installed $(PIPELINE_SRC)
	cd models && ../$(PY) -W ignore -m tandem_pipeline --out ../data/large --large

# Retrain on what `make run` served: its exported events (closed log segments) and catalog.
SERVED_EVENTS ?= data/demo/state/events/parquet
train-from-served: $(VENV)/.installed
	cd models && ../$(PY) -W ignore -m tandem_pipeline --out ../data/served --events-from ../$(SERVED_EVENTS) --catalog ../data/demo/items.parquet

# Server CPU per Recommend against ANN + rank + one minimal gRPC call, in one run per catalog.
# The 1M catalog's index is built once, then restored from its snapshot in data/large/state.
E2E_REQUESTS ?= 20000
bench-e2e: $(VENV)/.installed data/demo/eval.json data/large/eval.json
	command -v h2load >/dev/null || ($(APT) update -q && $(APT) install -y -q nghttp2-client)
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) TANDEM_E2E_DATA=data/demo TANDEM_E2E_REQUESTS=$(E2E_REQUESTS) \
		cargo bench -p tandem-gateway --bench e2e
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) TANDEM_E2E_DATA=data/large TANDEM_E2E_REQUESTS=$(E2E_REQUESTS) \
		TANDEM_E2E_STATE_DIR=data/large/state cargo bench -p tandem-gateway --bench e2e

# The release gateway binary from outside: h2load (Debian nghttp2-client) at concurrency 1,
# server CPU per Recommend and per Health call from /proc.
bench-e2e-h2load: $(VENV)/.installed data/demo/eval.json
	command -v h2load >/dev/null || ($(APT) update -q && $(APT) install -y -q nghttp2-client)
	cargo build --release -p tandem-gateway
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) $(PY) load-tests/e2e/h2load_cpu.py --data data/demo

# The demo catalog, or your own vectors: make bench-ann VECTORS=x.{parquet,fvecs,npy}
# [QUERIES=q.{parquet,fvecs,npy}] [METRIC=ip|l2|cosine] (ground truth computed here).
bench-ann: $(VENV)/.bench-installed data/demo/eval.json
ifdef VECTORS
	$(PY) load-tests/ann/compare.py --vectors $(VECTORS) $(if $(QUERIES),--query-file $(QUERIES)) \
		--metric $(or $(METRIC),ip) --out load-tests/ann/results
else
	$(PY) load-tests/ann/compare.py --data data/demo --out load-tests/ann/results
endif

# Two seeded sets of other shapes (200k x 64 clustered with varied norms, 200k x 128 weakly
# clustered unit vectors), several minutes each.
bench-ann-synthetic: $(VENV)/.bench-installed
	$(PY) load-tests/ann/compare.py --synthetic clustered64 --ef 16,32,64,128,256,512,1024 --out load-tests/ann/results
	$(PY) load-tests/ann/compare.py --synthetic weak128 --ef 16,32,64,128,256,512,1024,2048 --out load-tests/ann/results

bench-ann-large: $(VENV)/.bench-installed data/large/eval.json
	$(PY) load-tests/ann/compare.py --data data/large --out load-tests/ann/results

clean:
	rm -rf data $(TOOLS)

bench-ranking: $(VENV)/.installed data/demo/eval.json
	cargo build --release -p tandem-ranking --example rank_bench
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) $(PY) load-tests/ranking/compare.py --data data/demo --model ranker --lockstep-runs 5 --out load-tests/ranking/results
	ORT_DYLIB_PATH=$(ORT_DYLIB_PATH) $(PY) load-tests/ranking/compare.py --data data/demo --model seqranker --lockstep-runs 5 --out load-tests/ranking/results

# CUDA: a second venv with the onnxruntime-gpu wheel; its library replaces the CPU one.
# models/requirements-gpu.txt is CUDA 12; GPU_REQUIREMENTS=models/requirements-gpu-cuda13.txt
# for CUDA 13 nodes (delete .venv-gpu when switching).
GPU_VENV := .venv-gpu
GPU_REQUIREMENTS ?= models/requirements-gpu.txt
GPU_ORT_DYLIB_PATH = $$(ls $(CURDIR)/$(GPU_VENV)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1)
CUDA_LIBS = $$(ls -d $(CURDIR)/$(GPU_VENV)/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null | paste -sd: -)

$(GPU_VENV)/.installed: $(GPU_REQUIREMENTS)
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/pip install --quiet -r $(GPU_REQUIREMENTS)
	touch $@

gpu-venv: $(GPU_VENV)/.installed

# The ranking benchmark on the CUDA provider: tandem and the Python floor both on the GPU
# (compare.py runs from the GPU venv, whose onnxruntime is the CUDA build).
bench-ranking-gpu: $(GPU_VENV)/.installed data/demo/eval.json
	cargo build --release -p tandem-ranking --example rank_bench --features cuda
	for model in ranker seqranker; do \
		LD_LIBRARY_PATH=$(CUDA_LIBS):$$LD_LIBRARY_PATH ORT_DYLIB_PATH=$(GPU_ORT_DYLIB_PATH) \
			$(GPU_VENV)/bin/python load-tests/ranking/compare.py --data data/demo --model $$model \
			--execution-provider cuda --sessions 4 --rounds 3 --seconds 1.5 --lockstep-runs 3 \
			--out load-tests/ranking/results || exit 1; \
	done

run-gpu: $(GPU_VENV)/.installed data/demo/eval.json
	cargo build --release -p tandem-gateway --features cuda
	LD_LIBRARY_PATH=$(CUDA_LIBS):$$LD_LIBRARY_PATH ORT_DYLIB_PATH=$(GPU_ORT_DYLIB_PATH) \
		./target/release/tandem-gateway --listen $(LISTEN) --state-dir data/demo/state \
		--model-dir data/demo/models/$(MODEL) --execution-provider cuda
