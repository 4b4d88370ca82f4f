# The README's commands. All create (or reuse) the virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TRAIN := $(VENV)/.train-extra

.PHONY: demo test demo-model demo-slice-model ct-slice-model bundle clean

# Edge install: NumPy, OpenCV, pydicom, Flask, PyYAML and the TFLite interpreter; no TensorFlow.
$(BIN)/ctedge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Training and test extras (TensorFlow, tf_keras, matplotlib, pytest, hypothesis).
$(TRAIN): $(BIN)/ctedge
	$(BIN)/python -m pip install --quiet -e ".[train,test]"
	touch $@

demo: $(BIN)/ctedge
	$(BIN)/ctedge predict samples/covid-ct-md/COVID-19_P002

test: $(TRAIN)
	$(BIN)/python -m pytest -q

# Retrain and re-export the bundled demonstration model from ../shared/data (about 15 min on 2 cores).
demo-model: $(TRAIN)
	$(BIN)/ctedge train training/demo_studies.csv --out runs/demo --cnn-epochs 80 --head-epochs 100 --seed 0
	$(BIN)/ctedge quantize runs/demo --calibration training/demo_studies.csv --out edge/models/demo \
		--name cnn-bilstm-demo --version 0.2.0

# Offline installer archives dist/ctedge-<version>-linux_<arch>.tar.gz (see README: Offline install).
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

# The CT slice research model (docs/models-research.md): MobileNetV2 with the ImageNet weights of Coral's
# TFLite file, fine-tuned on the UCSD COVID-CT slices (GKasperek/data_c19_cropped exported to CT_SLICES),
# held out by surrogate patient; int8 calibrated on the training part. About 30 min on 2 shared cores.
CT_SLICES ?= /work/data/data_c19_cropped
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
