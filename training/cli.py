"""``ctedge train`` and ``ctedge evaluate``. TensorFlow is imported only when a command runs, so
``ctedge --help`` works on an edge install without the ``[train]`` extra."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.errors import UserError

NO_NETWORK = ("No network is used: pretrained weights come only from a local file you pass "
              "(weights='imagenet' downloads are not possible here).")


class MissingExtraError(UserError):
    """The command needs TensorFlow, which the edge install does not have."""


def _require_tensorflow() -> None:
    try:
        import tensorflow  # noqa: F401
        import tf_keras  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("tensorflow", "this command needs the training extra: pip install 'ctedge[train]'") from exc


def add_train(sub: argparse._SubParsersAction) -> None:
    from training.recipes import ARCH_INFO, DEFAULT_RECIPE, GROUP_ARCH, RECIPES

    p = sub.add_parser("train", help="train a classifier (CNN + biLSTM, or a slice model by --arch) (needs [train])",
                       description="Train on studies laid out as <root>/<class>/<patient>/... or listed in a CSV "
                                   "(patient,class,path). Splits are by patient, stratified, seeded. "
                                   f"--arch {GROUP_ARCH} (default): two-stage training of the compact CNN encoder and "
                                   "biLSTM head over 50-slice groups. Any other --arch: a slice model (one 2-D "
                                   "classifier per kept slice, the patient decided by --patient-rule), labelled by "
                                   "patient or, with --slice-labels, per slice (classes infection / none). " + NO_NETWORK)
    p.add_argument("data", type=Path, help="folder tree or CSV of labelled studies")
    p.add_argument("--out", type=Path, required=True, help="run folder: models, config, metrics, plots")
    p.add_argument("--arch", choices=(GROUP_ARCH, *ARCH_INFO), default=GROUP_ARCH,
                   help="architecture: " + "; ".join(f"{n}: {src}, {size} px" for n, (size, src) in ARCH_INFO.items()))
    p.add_argument("--modality", choices=("ct", "xray"), default="ct",
                   help="slice models: ct (every kept slice of CT studies) or xray (one chest radiograph per study, "
                        "DATA as <class>/<images> folders or a CSV; the bundle's kind is image)")
    p.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                   help="slice models (default: " + ", ".join(f"{v} for {k}" for k, v in DEFAULT_RECIPE.items()) + "): "
                        + "; ".join(f"{n}: {r.note}" for n, r in RECIPES.items()))
    p.add_argument("--weights", type=Path, default=None, help="slice models: local file of pretrained trunk weights (.h5; for mobilenetv2 also the uint8 TFLite "
                   "training/pretrained/mobilenet_v2_1.0_224_quant.tflite, dequantised)")
    p.add_argument("--freeze-epochs", type=int, default=0,
                   help="slice models: train only the head for this many epochs first, the trunk frozen")
    p.add_argument("--feature-cache", type=Path, default=None,
                   help="slice models: folder caching the frozen trunk's pooled features of each image; the "
                        "--freeze-epochs stage then trains the head on them (unaugmented), so a rerun takes minutes")
    p.add_argument("--fine-tune-from", default=None, metavar="LAYER",
                   help="slice models: after the head epochs, train only the trunk from this layer on (e.g. "
                        "block_13_expand of mobilenetv2); BatchNormalization stays frozen")
    p.add_argument("--slice-images", action="store_true",
                   help="CT slice model from 2-D slice images (PNG/JPEG) instead of DICOM studies: DATA is class "
                        "folders (CT_COVID/ and CT_NonCOVID/ as the UCSD COVID-CT collection, or covid/ and non_covid/) "
                        "or a CSV path,class,patient; classes covid / non_covid; surrogate patients (paper, source "
                        "image, near duplicates) when ids are missing; split by them into train / val (early "
                        "stopping) / --test-fraction hold-out; the edge cuts volumes to the lungs and does not mask "
                        "them for this model (crop lungs, mask_lungs off)")
    p.add_argument("--epochs", type=int, default=30, help="slice models: epochs (default 30)")
    p.add_argument("--input-size", type=int, default=None, help="slice models: input canvas (default: the arch's)")
    p.add_argument("--slice-labels", type=Path, default=None,
                   help="slice models: CSV patient_folder,file,infection; trains infection / none on slice labels")
    p.add_argument("--patient-rule", choices=("fraction", "mean"), default="fraction",
                   help="slice models: how slices decide the patient (recorded in the model card)")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="slice models: the rule's threshold (fraction rule: 0 or 0.1 in Rahimzadeh et al.)")
    p.add_argument("--cnn-epochs", type=int, default=100)
    p.add_argument("--head-epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-4; slice models: the recipe's base rate, scheduled by the recipe)")
    p.add_argument("--patience", type=int, default=25, help="early-stopping patience in epochs (default 25)")
    p.add_argument("--optimizer", choices=("adam", "lamb"), default="adam")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
    p.add_argument("--no-augment", action="store_true", help="no rotation/flip/blur/brightness augmentation")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="patients held out for early stopping, per class (default 0.2; unused by X-ray runs with --folds: each fold validates on its own)")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="patients held out as a test set, per class (stratified, seeded; classes with 3+ patients): "
                        "never used for fitting or early stopping, reported on after training (X-ray: the hold-out, "
                        "also with --folds, evaluated once with the final model)")
    p.add_argument("--folds", type=int, default=0,
                   help="k-fold cross-validation by patient: k runs in OUT/fold<i>/, each evaluated on the fold it "
                        "never saw; metrics pooled over the folds and their mean and spread across folds (X-ray: "
                        "each fold stops early on its validation fold; the best fold's model is the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    _require_tensorflow()
    from training.data import discover
    from training.evaluate import DEMO_NOTE, evaluate_run
    from training.recipes import GROUP_ARCH
    from training.train import TrainConfig, train_classifier

    if args.arch == GROUP_ARCH and args.modality != "ct":
        raise UserError("--modality", f"{GROUP_ARCH} reads CT studies; choose a 2-D --arch (e.g. densenet121) for X-ray")
    if args.arch != GROUP_ARCH:
        return _train_slices(args)

    if args.folds and args.test_fraction:
        raise UserError("--test-fraction", "with --folds every fold is held out in turn; leave --test-fraction out")
    if not 0 <= args.test_fraction < 1:
        raise UserError("--test-fraction", f"must be in [0, 1), got {args.test_fraction}")
    config = TrainConfig(cnn_epochs=args.cnn_epochs, head_epochs=args.head_epochs, batch_size=args.batch_size,
                         learning_rate=args.lr or 1e-4, patience=args.patience, optimizer=args.optimizer,
                         augment=not args.no_augment, mixup_alpha=args.mixup, val_fraction=args.val_fraction,
                         test_fraction=args.test_fraction, seed=args.seed)
    records = discover(args.data)
    if args.folds:
        return _cross_validate(records, args.out, config, args.folds)
    result = train_classifier(records, args.out, config)
    print(f"models: {args.out}/encoder.keras, {args.out}/head.keras; split (seed {config.seed}, {args.out}/split.json): "
          + ", ".join(f"{len(result.split[k])} {k}" for k in ("train", "val", "test")) + " patients")
    parts = (("test", "evaluation_test", "held-out test patients, never used for fitting or early stopping"),
             ("val", "evaluation", "validation patients, used for early stopping: optimistic"))
    for part, folder, what in parts:
        held = [r for r in records if r.patient in result.split.get(part, [])]
        if held:
            print(evaluate_run(result.encoder, result.head, held, args.out / folder, config.preprocessing,
                               note=f"{what}; {DEMO_NOTE}")["table"])
    if args.test_fraction and not result.split["test"]:
        print("No test patients: --test-fraction needs classes with at least 3 patients.")
    return 0


def _train_slices(args: argparse.Namespace) -> int:
    from edge.vote import PatientRule
    from training.data import discover
    from training.recipes import ARCH_INFO, DEFAULT_RECIPE
    from training.slice_train import SliceTrainConfig, train_slice_run, with_input_size

    if args.slice_images:
        return _train_slice_images(args)
    if args.fine_tune_from:
        raise UserError("--fine-tune-from", "is for --slice-images runs")
    if args.modality != "xray" and (args.folds or args.test_fraction):
        raise UserError("--arch", f"{args.arch} on CT is a slice model: --folds and --test-fraction are for "
                                  "cnn-bilstm and --modality xray")
    if not 0 <= args.test_fraction < 1:
        raise UserError("--test-fraction", f"must be in [0, 1), got {args.test_fraction}")
    if args.modality == "xray" and args.slice_labels:
        raise UserError("--slice-labels", "slice labels are for CT studies, not --modality xray")
    if args.weights is not None and not args.weights.is_file():
        raise UserError(args.weights, "pretrained weights file not found (weights are never downloaded)")
    if args.weights is not None and args.weights.suffix == ".tflite" and args.arch != "mobilenetv2":
        raise UserError(args.weights, "a .tflite weights file is read as the uint8 MobileNetV2 1.0 224: use --arch mobilenetv2")
    try:
        rule = PatientRule(args.patient_rule, args.threshold)
    except ValueError as exc:
        raise UserError("--threshold", str(exc)) from exc
    config = SliceTrainConfig(arch=args.arch, recipe=args.recipe or DEFAULT_RECIPE[args.modality], learning_rate=args.lr,
                              epochs=args.epochs, freeze_epochs=args.freeze_epochs,
                              batch_size=args.batch_size, patience=args.patience, augment=not args.no_augment,
                              val_fraction=args.val_fraction, seed=args.seed,
                              weights=str(args.weights) if args.weights else None,
                              slice_labels=str(args.slice_labels) if args.slice_labels else None,
                              patient_rule=rule.to_dict(), modality=args.modality, folds=args.folds,
                              test_fraction=args.test_fraction,
                              feature_cache=str(args.feature_cache) if args.feature_cache else None)
    config = with_input_size(config, args.input_size or ARCH_INFO[args.arch][0])
    records = discover(args.data)
    what = f"{config.kind} model ({args.arch}, {config.preprocessing.input_size} px, classes {', '.join(config.classes)}): "
    if args.modality == "xray":
        from training.xray_cv import train_xray_run

        run = train_xray_run(records, args.out, config)
        print(run.text)
        print(what + f"{args.out}/slice_model.keras (fold {run.final_fold}); split (seed {config.seed}, "
              f"{args.out}/split.json): {len(run.split['holdout'])} hold-out patients, "
              + ", ".join(f"fold {i}: {len(f['train'])} train / {len(f['val'])} val" for i, f in enumerate(run.split["folds"]))
              + f"; per-class report {args.out}/report.md")
    else:
        run = train_slice_run(records, args.out, config)  # type: ignore[assignment]
        print(what + f"{args.out}/slice_model.keras; split (seed {config.seed}): "
              + ", ".join(f"{len(run.split[k])} {k}" for k in ("train", "val")) + " patients")
    print(f"next: ctedge quantize {args.out} --calibration STUDIES --out BUNDLE")
    return 0


def _train_slice_images(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from edge.vote import PatientRule
    from training.ct_slice_images import CT_SLICE_CLASSES, train_slice_image_run
    from training.recipes import ARCH_INFO
    from training.slice_train import SliceTrainConfig, with_input_size

    if args.modality != "ct" or args.slice_labels or args.folds:
        raise UserError("--slice-images", "trains a CT slice model on labelled images: no --modality xray, "
                                          "--slice-labels or --folds")
    if not 0 < args.test_fraction < 1:
        raise UserError("--test-fraction", f"--slice-images needs a hold-out, in (0, 1); got {args.test_fraction}")
    if args.weights is not None and not args.weights.is_file():
        raise UserError(args.weights, "pretrained weights file not found (weights are never downloaded)")
    try:
        rule = PatientRule(args.patient_rule, args.threshold)
    except ValueError as exc:
        raise UserError("--threshold", str(exc)) from exc
    config = SliceTrainConfig(arch=args.arch, recipe=args.recipe or "default", learning_rate=args.lr,
                              epochs=args.epochs, freeze_epochs=args.freeze_epochs, batch_size=args.batch_size,
                              patience=args.patience, augment=not args.no_augment, val_fraction=args.val_fraction,
                              seed=args.seed, weights=str(args.weights) if args.weights else None,
                              patient_rule=rule.to_dict(), test_fraction=args.test_fraction,
                              fine_tune_from=args.fine_tune_from, slice_classes=CT_SLICE_CLASSES)
    config = with_input_size(config, args.input_size or ARCH_INFO[args.arch][0])
    config = replace(config, preprocessing=replace(config.preprocessing, mask_lungs=False, crop="lungs"))
    doc = train_slice_image_run(args.data, args.out, config)
    c = doc["counts"]
    print(f"slice model ({args.arch}, {config.preprocessing.input_size} px, classes {', '.join(CT_SLICE_CLASSES)}): "
          f"{args.out}/slice_model.keras; {doc['near_duplicates_joined']} near-duplicate images joined to another "
          "surrogate patient; " + ", ".join(f"{k}: {v.get('covid', 0)} covid + {v.get('non_covid', 0)} non_covid images "
                                           f"of {v['patients']} patients" for k, v in c.items()))
    print(doc["report"])
    print(f"manifest with parts: {args.out}/manifest.csv; next: ctedge quantize {args.out} --calibration STUDIES --out BUNDLE")
    return 0


def _cross_validate(records, out: Path, config, k: int) -> int:
    from edge.metrics import mean_and_spread
    from training.data import patient_kfold, patient_split
    from training.evaluate import report_predictions
    from training.train import patient_predictions, prepare_records, train_classifier

    predictions, fold_reports = [], []
    for i, (train, held_out) in enumerate(patient_kfold(records, k, config.seed)):
        # Early stopping watches patients carved from the training folds, never the held-out fold.
        inner = patient_split(train, val_fraction=config.val_fraction, seed=config.seed)
        result = train_classifier(train, out / f"fold{i}", config, inner)
        fold = patient_predictions(result.encoder, result.head, prepare_records(held_out, config.preprocessing),
                                   config.preprocessing.override)
        fold_reports.append(report_predictions(fold, out / f"fold{i}" / "evaluation")["patient"])
        predictions += fold
    print(report_predictions(predictions, out / "cross_validation")["table"])
    spread = mean_and_spread(fold_reports)
    (out / "cross_validation" / "folds.json").write_text(json.dumps(
        {"folds": [r["macro"] for r in fold_reports], "mean_and_spread": spread}, indent=2, default=float))
    print(f"Across {k} folds (patient level, macro average; mean ± sd [min-max]):")
    for m, s in spread.items():
        print(f"  {m:<12} {100 * s['mean']:6.1f} ± {100 * s['sd']:4.1f}  [{100 * s['min']:.1f}-{100 * s['max']:.1f}]")
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained run on labelled studies (needs [train])",
                       description="Group- (slice-, for a slice model) and patient-level metrics (accuracy, "
                                   "sensitivity, specificity, PPV, NPV, F1, ROC AUC, confusion matrix), ROC and "
                                   "confusion plots, and a table laid out like Table 2 of the seed paper.")
    p.add_argument("data", type=Path, help="folder tree or CSV of labelled studies")
    p.add_argument("--run", type=Path, required=True, help="run folder written by ctedge train")
    p.add_argument("--out", type=Path, default=None, help="folder for metrics and plots (default RUN/evaluation)")
    p.add_argument("--override", type=float, default=None,
                   help="vote threshold (default: the one the run was trained with, 0.9 unless changed)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    _require_tensorflow()
    from dataclasses import replace

    from training.data import discover
    from training.evaluate import evaluate_run
    from training.slice_evaluate import evaluate_slice_run
    from training.slice_train import is_slice_run
    from training.train import load_run_models, read_run_preprocessing

    if is_slice_run(args.run):
        print(evaluate_slice_run(args.run, discover(args.data), args.out or args.run / "evaluation")["table"])
        return 0
    options, _ = read_run_preprocessing(args.run)
    if args.override is not None:
        options = replace(options, override=args.override)
    encoder, head = load_run_models(args.run)
    report = evaluate_run(encoder, head, discover(args.data), args.out or args.run / "evaluation", options)
    print(report["table"])
    return 0


def add_train_slices(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-slices", help="slice-level infection model against slice labels, leave-one-patient-out (needs [train])",
                       description="Trains the CNN encoder with a two-class softmax (infection / none) on radiologists' "
                                   "slice labels, holding out one patient per fold, and reports each held-out "
                                   "patient's slice-level ROC AUC. A demonstration, not a clinical claim. " + NO_NETWORK)
    p.add_argument("study", nargs="+", type=Path, help="study folders; a folder's name is its patient_folder in the CSV")
    p.add_argument("--labels", type=Path, required=True, help="CSV with columns patient_folder, file, infection")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_slices)


def cmd_train_slices(args: argparse.Namespace) -> int:
    _require_tensorflow()
    from training.slice_experiment import run
    from training.train import TrainConfig

    config = TrainConfig(cnn_epochs=args.epochs, learning_rate=args.lr, patience=args.patience, seed=args.seed)
    result = run(args.study, args.labels, args.out, config)
    for fold in result["folds"]:
        print(f"held out {fold['held_out']}: slice ROC AUC {fold['roc_auc']:.3f} "
              f"({fold['test_infected']}/{fold['n_test_slices']} infected slices, trained on {fold['n_train_slices']})")
    print(f"mean ROC AUC {result['mean_roc_auc']:.3f} (demonstration on {len(result['folds'])} patients, not a clinical claim)")
    return 0


def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="Grad-CAM heatmaps of the slices that drove the decision (needs [train])",
                       description="Grad-CAM on the CNN encoder's last convolution for the verdict's class (or "
                                   "--class), through the biLSTM head; writes overlay PNGs of each group's top "
                                   "slices and explain.json with the heatmap consistency under rotation and "
                                   "translation (cosine similarity, mean).")
    p.add_argument("study", type=Path)
    p.add_argument("--run", type=Path, required=True, help="run folder written by ctedge train")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--class", dest="class_name", choices=("covid", "other_pneumonia", "healthy"), default=None)
    p.add_argument("--top", type=int, default=3, help="slices per group")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    _require_tensorflow()
    from training.explain import explain_study

    result = explain_study(args.study, args.run, args.out, args.class_name, args.top)
    for s in result["slices"]:
        extra = f", consistency {s['consistency']['mean']:.3f}" if "consistency" in s else ""
        print(f"group {s['group']} slice {s['slice_index']} ({s['file']}): share {s['share']:.2f}{extra} -> {s['png']}")
    if result["mean_consistency"] is not None:
        print(f"mean heatmap consistency: {result['mean_consistency']:.3f}")
    print(f"heatmaps for {result['class']} in {args.out}/ ({result['note']})")
    return 0


def add_train_unet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-unet", help="train the U-Net lung segmenter on image/mask pairs (needs [train])",
                       description="Trains the U-Net on <pairs>/images/<patient>_<n>.png and <pairs>/masks/<same name>, "
                                   "holding out whole patients, and reports the validation Dice. With --from-studies, "
                                   "first writes pairs from studies using the classical segmenter's masks. " + NO_NETWORK)
    p.add_argument("pairs", type=Path, help="folder with images/ and masks/")
    p.add_argument("--out", type=Path, required=True, help="run folder (unet.keras, unet_metrics.json)")
    p.add_argument("--from-studies", nargs="+", type=Path, default=None, help="studies to export pairs from first")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-patients", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_unet)


def cmd_train_unet(args: argparse.Namespace) -> int:
    _require_tensorflow()
    from training.unet import export_pairs, train_unet

    if args.from_studies:
        print(f"wrote {export_pairs(args.from_studies, args.pairs)} image/mask pairs to {args.pairs}/")
    metrics = train_unet(args.pairs, args.out, args.epochs, args.lr, val_patients=args.val_patients, seed=args.seed)
    dice = "n/a (no held-out patient)" if metrics["val_dice"] is None else f"{metrics['val_dice']:.3f}"
    print(f"U-Net: validation Dice {dice} on {metrics['n_val']} slices of {metrics['val_patients']}; "
          f"model {args.out}/unet.keras")
    return 0


def add_xray_shortcuts(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("xray-shortcuts", help="how much of an X-ray run's data is told apart by source (needs [train])",
                       description="On the run's frozen trunk features of every image of a manifest with a 'source' "
                                   "column: how well a logistic regression predicts the source (grouped CV), the "
                                   "floor (logistic regression on the frozen features, fitted outside the run's "
                                   "hold-out, scored on it, patient bootstrap 95%% intervals), accuracy per source of "
                                   "the run's final model and of the floor on the hold-out, and leave-one-source-out "
                                   "results. Writes shortcuts.json, shortcuts.md and source_confusion.png.")
    p.add_argument("manifest", type=Path, help="manifest CSV (patient, class, path, source, ...) the run was trained on")
    p.add_argument("--run", type=Path, required=True, help="X-ray run folder of ctedge train --modality xray")
    p.add_argument("--out", type=Path, default=None, help="report folder (default RUN/shortcuts)")
    p.add_argument("--feature-cache", type=Path, default=None, help="trunk feature cache (as given to ctedge train)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_xray_shortcuts)


def cmd_xray_shortcuts(args: argparse.Namespace) -> int:
    _require_tensorflow()
    from training.xray_shortcuts import format_markdown, run_shortcuts

    out = args.out or args.run / "shortcuts"
    print(format_markdown(run_shortcuts(args.manifest, args.run, out, args.feature_cache, args.seed)))
    print(f"report: {out}/shortcuts.md, {out}/shortcuts.json, {out}/source_confusion.png")
    return 0


def add_data(sub: argparse._SubParsersAction) -> None:
    from training.public_data import NEAR_CORRELATION, NEAR_THRESHOLD, PRIORITY, READERS

    p = sub.add_parser("data", help="import public chest X-ray / CT-slice collections into one manifest CSV",
                       description="Work on public collections (no TensorFlow needed).")
    commands = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    q = commands.add_parser("import", help="read collections into OUT/manifest.csv with summary and montages",
                            description="Read each collection's layout and write OUT/manifest.csv (path, class, patient, "
                                        "view, source, licence, sha256, width, height), OUT/duplicates.csv, "
                                        "OUT/summary.json, OUT/summary.md and OUT/montages/<source>_<class>.png. X-ray: "
                                        "frontal views only (laterals dropped and counted). Exact (sha256) and near "
                                        "(pHash) duplicates are removed across sources, keeping the copy from the "
                                        f"earliest of {', '.join(PRIORITY)}. The agchung Actualmed and Figure1 "
                                        "collections are refused (reserved external test).")
    layouts = {"ieee8023": "folder with metadata.csv in the ieee8023 covid-chestxray schema (e.g. GeneralBlockchain's)",
               "hannover": "Hannover Medical School folder: data.csv and png/",
               "kermany": "Kermany pediatric folders .../NORMAL and .../PNEUMONIA (patient id in the file name)",
               "radiography": "COVID-19 Radiography Database folders COVID/, Normal/ (no patient ids: one per image)",
               "ucsd-ct": "UCSD COVID-CT slices in CT_COVID/ and CT_NonCOVID/ (classes covid / non_covid)"}
    assert set(layouts) == set(READERS)
    for name, help_text in layouts.items():
        q.add_argument(f"--{name}", type=Path, metavar="DIR", help=help_text)
    q.add_argument("--out", type=Path, required=True, help="folder for the manifest, summary and montages")
    q.add_argument("--near-threshold", type=int, default=NEAR_THRESHOLD,
                   help=f"pHash Hamming distance (of 64 bits) at or under which two images may be one (default {NEAR_THRESHOLD})")
    q.add_argument("--near-correlation", type=float, default=NEAR_CORRELATION,
                   help="... and are, when their 32x32 grey thumbnails correlate at least this much "
                        f"(default {NEAR_CORRELATION})")
    q.set_defaults(func=cmd_data_import)


def cmd_data_import(args: argparse.Namespace) -> int:
    from training.public_data import READERS, import_collections, summary_markdown

    sources = {name: getattr(args, name.replace("-", "_")) for name in READERS if getattr(args, name.replace("-", "_"))}
    summary = import_collections(sources, args.out, args.near_threshold, args.near_correlation)
    print(summary_markdown(summary))
    print(f"wrote {args.out / 'manifest.csv'}, summary.json, summary.md, duplicates.csv and montages/")
    return 0
