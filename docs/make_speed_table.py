"""Write the README's speed table from the JSON of three benchmark runs kept in docs/measurements/:

    ctedge bench STUDY --model edge/models/demo --repeats 5 --threads 2 --dispatch avx2 --json > docs/measurements/bench-avx2.json
    ctedge bench STUDY --model edge/models/demo --repeats 5 --threads 2 --json > docs/measurements/bench-native.json
    ctedge bench-dicom STUDY2 --runs 4 --json > docs/measurements/bench-dicom.json
    .venv/bin/python docs/make_speed_table.py          # rewrites the table between the README's speed markers

Every figure in the table comes from those files: nothing is typed by hand. ``tests/test_docs.py``
fails when the README's table differs from what this writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DOCS = Path(__file__).resolve().parent
MEASURED = DOCS / "measurements"
README = DOCS.parent / "README.md"
START, END = "<!-- speed table: docs/make_speed_table.py -->", "<!-- end of speed table -->"
ROWS = (("tflite_float32", "LiteRT (XNNPACK) float32"), ("tflite_int8", "LiteRT (XNNPACK) int8"),
        ("openvino-f32_float32", "OpenVINO float32 file, f32 hint"), ("openvino-f32_int8", "OpenVINO int8 file, f32 hint"))


def _ms(variant: dict) -> str:
    return f"{variant['ms_per_group_median']:.0f}" if "ms_per_group_median" in variant else "-"


def _kernels(variant: dict) -> str:
    convolution = [name.split(" ", 1)[1] for name in variant.get("kernels", {}) if name.startswith("Convolution")]
    return f" `{convolution[0]}`" if convolution else ""


def _fastest(doc: dict) -> str:
    rows = doc["variants_by_threads"]["rows"]
    best = doc["variants_by_threads"]["fastest"]
    row = next(r for r in rows if all(r.get(k) == best[k] for k in ("runtime", "variant", "threads")))
    key = "runoff_ms_per_group_median"       # the run-off of ctedge tune: timed in turn with LiteRT float32
    reference = min(r[key] for r in rows if (r["runtime"], r["variant"]) == ("litert", "float32") and key in r)
    return (f"{best['runtime']} {best['variant']}, {best['threads']} thread(s): {row[key]:.0f} ms, "
            f"{reference / row[key]:.2f}x")


def _load(doc: dict) -> str:
    return f"{doc['load_average']['before'][0]:.1f}-{doc['load_average']['after'][0]:.1f}"


def table(avx2: dict, native: dict, dicom: dict) -> str:
    """The markdown of the speed table and its notes."""
    lines = [
        f"Demo CT encoder, one 50-slice group, 2 threads, median of {avx2['repeats'] * avx2['study_units']} "
        f"(ms per group; ratio to LiteRT float32 timed in turn with it); {avx2['cpu_model']}, {avx2['cpu_count']} cores, "
        f"flags {' '.join(native['cpu_flags'])}; load average {_load(avx2)} (AVX2 run) and {_load(native)} (native run):",
        "",
        "| runtime and model file | AVX2 kernels (`--dispatch avx2`) | ratio | native (AVX-512 VNNI) | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, name in ROWS:
        a, n = avx2["variants"].get(key, {}), native["variants"].get(key, {})
        lines.append(f"| {name} | {_ms(a)}{_kernels(a)} | {avx2['ratio_vs_litert_float32'].get(key, '-')}x "
                     f"| {_ms(n)}{_kernels(n)} | {native['ratio_vs_litert_float32'].get(key, '-')}x |")
    lines += [
        f"| fastest faithful candidate of `tune` (1 or 2 threads; its run-off) | {_fastest(avx2)} | | {_fastest(native)} | |",
        "",
    ]
    ahead, not_ahead = dicom["decoded_ahead"], dicom["not_decoded_ahead"]
    lines.append(
        f"DICOM ({dicom['instances']} CT instances, {dicom['megabytes']} MB, {dicom['transfer_syntax'].split(',')[0]}; "
        f"`storescu -xs` to ctedge, results to Orthanc; {dicom['cpu']}, load average "
        f"{dicom['load_average'][0]:.1f}): received at {dicom['instances_per_second']:.0f} instances/s; last instance "
        f"to SR in Orthanc **{ahead['seconds']:.2f} s** with slices decoded as they arrive (verdict after "
        f"{ahead['verdict_seconds']:.2f} s: read {ahead['read_ms'] / 1000:.2f} s; then the SR made, sent and stored in "
        f"{ahead['sr_made_and_sent_seconds']:.2f} s; heatmaps there after {ahead['heatmaps_in_orthanc_seconds']:.1f} s), "
        f"{not_ahead['seconds']:.2f} s without (read {not_ahead['read_ms'] / 1000:.2f} s); medians of {ahead['runs']} and "
        f"{not_ahead['runs']} runs.")
    return "\n".join(lines)


def render(readme: str, avx2: dict, native: dict, dicom: dict) -> str:
    """``readme`` with the text between the speed markers replaced by :func:`table`."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(avx2, native, dicom)}\n{END}{tail}"


def measured(folder: Path = MEASURED) -> tuple[dict, dict, dict]:
    return tuple(json.loads((folder / f"{name}.json").read_text())  # type: ignore[return-value]
                 for name in ("bench-avx2", "bench-native", "bench-dicom"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=README, help="the README to rewrite (default: the repository's)")
    args = parser.parse_args()
    args.out.write_text(render(README.read_text(), *measured()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
