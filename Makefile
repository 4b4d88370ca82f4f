# The README's commands. All create (or reuse) the virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TRAIN := $(VENV)/.train-extra

.PHONY: demo test test-fast lint demo-model demo-slice-model xray-model ct-slice-model bundle clean

# The virtual environment is created once; the installs below rerun only when pyproject.toml changes
# (pip then finds what is already installed and only refreshes the editable ctedge).
$(BIN)/python:
	@echo "make: [1/3] creating the virtual environment $(VENV) and upgrading pip"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on --upgrade pip

# Edge install: NumPy, OpenCV, pydicom, Flask, PyYAML and the TFLite interpreter; no TensorFlow.
$(BIN)/ctedge: pyproject.toml | $(BIN)/python
	@echo "make: [2/3] installing ctedge and its edge dependencies (about 2 minutes on a first run; pip names each package)"
	$(BIN)/python -m pip install --progress-bar on -e .
	touch $@

# Training, test and OpenVINO extras (TensorFlow, tf_keras, matplotlib, pytest, hypothesis; openvino, ~59 MB,
# so that tests/test_openvino.py runs instead of skipping).
$(TRAIN): $(BIN)/ctedge
	@echo "make: [3/3] installing the training, test and OpenVINO extras (TensorFlow: several minutes on a first run)"
	$(BIN)/python -m pip install --progress-bar on -e ".[train,test,openvino]"
	touch $@

demo: $(BIN)/ctedge
	$(BIN)/ctedge predict samples/covid-ct-md/COVID-19_P002

# Test lanes (docs/testing.md). test: everything, as CI runs it (after lint). test-fast: the edge only,
# without the slow, train (TensorFlow) and external (Orthanc, dcmtk, Chromium, installer builds) tests.
# More pytest options with e.g. make test-fast PYTEST_ARGS="-x --durations=20".
test: $(TRAIN)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(TRAIN)
	$(BIN)/python -m pytest -q -m "not slow and not train and not external" $(PYTEST_ARGS)

# ruff and mypy, configured in pyproject.toml.
lint: $(TRAIN)
	$(BIN)/python -m ruff check edge training quantize tests
	$(BIN)/python -m mypy

# Retrain and re-export the bundled demonstration model from ../shared/data (about 15 min on 2 cores).
demo-model: $(TRAIN)
	$(BIN)/ctedge train training/demo_studies.csv --out runs/demo --cnn-epochs 80 --head-epochs 100 --seed 0
	$(BIN)/ctedge quantize runs/demo --calibration training/demo_studies.csv --out edge/models/demo \
		--name cnn-bilstm-demo --version 0.2.0

# Offline installer archives dist/ctedge-<version>-linux_<arch>.tar.gz (see docs/operations.md: Offline install).
# Downloads the edge wheels once per target; narrow it with e.g. make bundle BUNDLE_ARCHES=x86_64 BUNDLE_PYTHONS=3.12
BUNDLE_ARCHES ?= x86_64 aarch64
BUNDLE_PYTHONS ?= 3.10 3.11 3.12 3.13
bundle:
	for arch in $(BUNDLE_ARCHES); do \
		$(PYTHON) installer/build_bundle.py --out dist --arch $$arch $(BUNDLE_PYTHONS:%=--python %) || exit 1; \
	done

demo-slice-model: $(TRAIN)
	$(BIN)/ctedge train training/demo_studies.csv --arch small-cnn --lr 1e-3 --epochs 80 --patience 80 --seed 0 \
		--slice-labels ../shared/data/covid-ct-md/slice_labels.csv --out runs/demo-slice
	$(BIN)/ctedge quantize runs/demo-slice --calibration training/demo_studies.csv --out edge/models/demo-slice \
		--name small-cnn-slice-demo --version 0.1.0 --max-slices 200

# Retrain and re-export the X-ray research model (docs/models-research.md, docs/experiments/xray-finetune).
# XRAY_WORK: the exported collections and `ctedge data import`'s manifest in XRAY_WORK/manifests/xray (docs/data.md),
# the reserved external test in XRAY_WORK/external. The fine-tuning step needs PyTorch (TORCH_PYTHON): about 5 min
# on one H200 GPU, hours on 2 CPU cores; the other steps about 5 min on 2 cores.
XRAY_WORK ?= ../data
TORCH_PYTHON ?= python3
XFT := docs/experiments/xray-finetune
XFT_ENV := XRAY_WORK=$(abspath $(XRAY_WORK)) PYTHONPATH=$(CURDIR)
xray-model: $(TRAIN)
	cd $(XFT) && $(XFT_ENV) $(abspath $(BIN))/python pack.py
	cd $(XFT) && $(XFT_ENV) $(TORCH_PYTHON) finetune.py --out $(abspath $(XRAY_WORK))/xft/gpu1
	cd $(XFT) && $(XFT_ENV) $(abspath $(BIN))/python analyse.py $(abspath $(XRAY_WORK))/xft/gpu1 > results.md
	cd $(XFT) && $(XFT_ENV) $(abspath $(BIN))/python import_weights.py $(abspath $(XRAY_WORK))/xft/gpu1 $(abspath $(XRAY_WORK))/xft/run
	cd $(XFT) && $(XFT_ENV) $(abspath $(BIN))/python card_summary.py
	$(BIN)/ctedge quantize $(XRAY_WORK)/xft/run --calibration $(XRAY_WORK)/xft/calibration.csv --out edge/models/xray-research \
		--name xray-research --version 0.2.0 --max-slices 300 --research $(XRAY_WORK)/xft/research.json

# The CT slice research model (docs/models-research.md): MobileNetV2 with the ImageNet weights of Coral's
# TFLite file, fine-tuned on the UCSD COVID-CT slices (GKasperek/data_c19_cropped exported to CT_SLICES),
# held out by surrogate patient; int8 calibrated on the training part. About 30 min on 2 shared cores.
CT_SLICES ?= ../data/data_c19_cropped
MOBILENET_TFLITE ?= training/pretrained/mobilenet_v2_1.0_224_quant.tflite
ct-slice-model: $(TRAIN)
	$(BIN)/ctedge train $(CT_SLICES) --slice-images --arch mobilenetv2 --weights $(MOBILENET_TFLITE) \
		--recipe default --lr 3e-4 --batch-size 32 --freeze-epochs 10 --epochs 20 --patience 5 --fine-tune-from block_13_expand \
		--test-fraction 0.2 --val-fraction 0.15 --patient-rule fraction --threshold 0.3 --seed 0 --out runs/ct-slice-research
	$(BIN)/ctedge quantize runs/ct-slice-research --calibration runs/ct-slice-research/manifest.csv \
		--out edge/models/ct-slice-research --name mobilenetv2-ct-slice-research --version 0.1.0 --max-slices 200 \
		--research runs/ct-slice-research/research.json --known-bias "External check on three real COVID-CT-MD volumes it never saw: all three called covid (COVID-19 patient 50% of kept slices, pneumonia patient 73%, healthy patient 74%): it does not work on real scanner volumes."

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
