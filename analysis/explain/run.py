"""``python -m analysis explain``: relevance maps of a trained model over a datalist partition or a folder of volumes,
measured against known regions, with class means, depth profiles, layer-4 channels and a randomisation check.

Outputs under ``--out``::

    maps/<scan>_<method>.nii.gz      relevance on the model's input grid (the model-ready volume's affine)
    native/<scan>_<method>.nii.gz    the same map on the scan's own grid (when the manifest names the native NIfTI)
    regions/<scan>_regions.nii.gz    the region labels used for the scan, on the model grid
    figures/                         overlays through both hippocampi and montages (first scans of each class),
                                     class means, depth profiles, layer-4 channels
    class_means/<method>_{CN,AD,AD_minus_CN}.nii.gz
    per_scan.csv, summary.json       per scan and method: AD probability, relevance share and density gain per region,
                                     pointing game; the summary with subject-bootstrap CIs and the verdict

Regions come from the synthetic cohort's truth maps (``--truth-dir``) or, for real scans, from the generator's MNI152
regions registered onto each scan (approximate; see ``regions.template_regions_on_grid``).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from analysis.explain import figures, profiles, regions
from analysis.explain.items import _manifest, _stem, collect_items  # noqa: F401  (_manifest: importable from here)
from analysis.explain.maps import (
    METHOD_TITLES,
    METHODS,
    MapSettings,
    compute_maps,
    load_trained_model,
    predict_with_activations,
)
from analysis.explain.options import add_arguments  # noqa: F401  (python -m analysis explain reads it here)
from analysis.explain.sanity import cascading_randomisation
from analysis.explain.summary import GAIN_EXPECTED, TARGET, _find, _where_instead, verdict  # noqa: F401
from preprocessing.synthetic.truth import find_truth

CHANNEL_LAYER = "net.layer4"


def _loader():
    from monai.transforms import Compose

    from scripts.plan import preprocess_section

    return Compose(preprocess_section("load_transforms")), Compose(preprocess_section("model_input_normalization"))


def _regions_for(item: Mapping[str, Any], image: nib.Nifti1Image, mask: np.ndarray, options: Mapping[str, Any]):
    """Region labels on the model grid and, for synthetic scans, the true hippocampal volume change (percent)."""
    truth_dir = options.get("truth_dir")
    if truth_dir is not None:
        truth_file = find_truth(truth_dir, _stem(item["image"]))
        region_file = truth_file and truth_file.with_name(truth_file.name.replace("_truth.json", "_regions.nii.gz"))
        if region_file and region_file.is_file():
            truth = json.loads(truth_file.read_text())
            labels = regions.truth_regions_on_grid(region_file, image)
            return labels, "truth", float(truth["percent_change"]["hippocampi"])
    labels = regions.template_regions_on_grid(image, mask, syn=options.get("syn", False), seed=options.get("seed", 0))
    return labels, "template", regions.region_volumes_ml(labels, image.affine)["hippocampi"]


def explain_items(
    items: Sequence[Mapping[str, Any]],
    model_file: str | Path,
    out: str | Path,
    methods: Sequence[str] = METHODS,
    settings: MapSettings | None = None,
    truth_dir: str | Path | None = None,
    figure_scans: int = 2,
    randomisation_scans: int = 4,
    native: bool = True,
    margin: int = 1,
    syn: bool = False,
    resamples: int = 2000,
    seed: int = 0,
    occlusion_scans: int | None = None,
    randomisation_methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Explain every item; write the outputs listed in the module docstring; return the summary.

    Occlusion costs one forward pass per position of the occluding cube (64 at the default settings, against two
    for Grad-CAM): ``occlusion_scans`` limits it to that many scans, half of them AD where possible, and the
    summary gives each method's number of scans. ``randomisation_methods`` (default: all) are the methods put
    through the randomisation check.
    """
    settings = settings or MapSettings()
    out = Path(out)
    for sub in ("maps", "native", "regions", "figures", "class_means"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    model = load_trained_model(model_file)
    load, normalise = _loader()
    options = {"truth_dir": truth_dir, "syn": syn, "seed": seed}
    rows, scans, kept = [], [], {m: {} for m in methods}
    all_labels = [item["label"] for item in items]
    occluded = set(range(len(items)))
    if occlusion_scans is not None and "occlusion" in methods:
        occluded = set(_balanced(list(range(len(items))), all_labels, occlusion_scans))
    activations, region_maps, labels_of, images_of, inputs = [], [], [], [], []
    per_class_figures = {0: 0, 1: 0, None: 0}
    started = time.perf_counter()
    for index, item in enumerate(tqdm(items, desc="explaining", unit="scan")):
        try:
            data = load({"image": item["image"]})
        except Exception as error:  # the reader names the file and the formats it takes; no traceback for that
            cause = error.__cause__ or error
            raise SystemExit(f"explain: {type(cause).__name__}: {cause}") from None
        raw = data["image"]
        affine = np.asarray(raw.affine, dtype=np.float64)
        volume = normalise({"image": raw.clone()})["image"]
        image_array = raw[0].numpy().astype(np.float32)
        image_nii = nib.Nifti1Image(image_array, affine)
        mask = nib.load(item["mask"]).get_fdata() > 0.5 if item.get("mask") else image_array > 0
        labels, source, hippocampal_measure = _regions_for(item, image_nii, mask, options)
        nib.save(
            nib.Nifti1Image(labels.astype(np.int16), affine), out / "regions" / f"{_stem(item['image'])}_regions.nii.gz"
        )
        probability, activation = predict_with_activations(model, volume, CHANNEL_LAYER, settings.class_index)
        chosen_methods = [m for m in methods if m != "occlusion" or index in occluded]
        maps = compute_maps(model, volume, chosen_methods, settings)
        group = {0: "CN", 1: "AD"}.get(item["label"], "unlabelled")
        scan = {
            **{k: item.get(k) for k in ("subject", "image_id", "label")},
            "group": group,
            "prob_AD": probability,
            "regions": source,
            "hippocampal_measure": hippocampal_measure,
        }
        scans.append(scan)
        native_img = (
            nib.load(item["native"]) if native and item.get("native") and Path(item["native"]).exists() else None
        )
        for method, relevance in maps.items():
            stem = f"{_stem(item['image'])}_{method}"
            nib.save(nib.Nifti1Image(relevance, affine), out / "maps" / f"{stem}.nii.gz")
            if native_img is not None:
                nib.save(regions.to_native_grid(relevance, affine, native_img), out / "native" / f"{stem}.nii.gz")
            by_region = regions.relevance_by_region(relevance, labels, mask)
            hit = regions.pointing_game(relevance, labels, mask, margin_voxels=margin)
            row = regions.region_row(item["subject"], item["image_id"], group, method, by_region, hit)
            rows.append({**row, "prob_AD": probability, "hippocampal_measure": hippocampal_measure})
            kept[method][index] = relevance
        if per_class_figures[item["label"]] < figure_scans:
            per_class_figures[item["label"]] += 1
            first = chosen_methods[0]
            name = f"{_stem(item['image'])}"
            title = f"{item['subject']} {item['image_id']} {group}: P(AD) {probability:.2f}, {METHOD_TITLES[first]}"
            figures.overlay_figure(
                image_array, maps[first], labels, affine, out / "figures" / f"{name}_overlay.png", title
            )
            figures.montage_figure(image_array, maps[first], out / "figures" / f"{name}_montage.png", title=title)
            figures.methods_figure(image_array, maps, labels, affine, out / "figures" / f"{name}_methods.png")
        activations.append(activation)
        region_maps.append(np.where(mask | (labels > 0), labels, -1))
        labels_of.append(item["label"])
        images_of.append(image_array)
        inputs.append(volume)
    seconds_maps = time.perf_counter() - started

    summary: dict[str, Any] = {
        "model": str(model_file),
        "n_scans": len(items),
        "methods": list(methods),
        "n_scans_per_method": {m: len(kept[m]) for m in methods},
        "settings": {
            **vars(settings),
            "pointing_margin_voxels": margin,
            "regions": sorted({s["regions"] for s in scans}),
        },
        "seconds_maps": round(seconds_maps, 1),
    }
    summary["regions"] = regions.summarise(rows, resamples=resamples, seed=seed)
    summary["correlation"] = _correlations(rows, methods, scans, resamples, seed)
    summary.update(_class_outputs(out, kept, labels_of, images_of, region_maps, activations, methods, items))
    started = time.perf_counter()
    chosen = _balanced(inputs, labels_of, randomisation_scans)
    checked = list(randomisation_methods or methods)
    summary["randomisation"] = cascading_randomisation(model, chosen, checked, settings, seed=seed) if chosen else None
    summary["seconds_randomisation"] = round(time.perf_counter() - started, 1)
    summary["verdict"] = verdict(summary)
    _write_rows(rows, out / "per_scan.csv")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def _balanced(inputs: Sequence, labels: Sequence[int | None], n: int) -> list:
    ad = [x for x, y in zip(inputs, labels, strict=True) if y == 1]
    rest = [x for x, y in zip(inputs, labels, strict=True) if y != 1]
    half = (n + 1) // 2
    chosen = ad[:half] + rest[: n - min(half, len(ad))]
    return chosen[:n]


def _correlations(rows, methods, scans, resamples: int, seed: int) -> dict[str, Any]:
    """Hippocampal relevance density vs the true hippocampal volume change (synthetic) or registered volume (real).

    Density gain, not share: the share of relevance inside a region grows with the region's own size, so an
    atrophied (smaller) hippocampus would hold less relevance even under the same map.
    """
    what = (
        "true hippocampal volume change (%)"
        if all(s["regions"] == "truth" for s in scans)
        else ("hippocampal volume of the registered template region (ml; approximate)")
    )
    out = {"against": what, "methods": {}}
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        out["methods"][method] = regions.correlation(
            [r["hippocampi_density_gain"] for r in own],
            [r["hippocampal_measure"] for r in own],
            [r["subject"] for r in own],
            resamples=resamples,
            seed=seed,
        )
    return out


def _class_outputs(out: Path, kept, labels, images, region_maps, activations, methods, items) -> dict[str, Any]:
    """Class-mean maps (NIfTI and figure), depth profiles along each axis, and the layer-4 channels."""
    result: dict[str, Any] = {"depth_profiles": {}, "class_means": {}}
    known = [i for i, y in enumerate(labels) if y in (0, 1)]
    if not known:
        return result
    first_affine = nib.load(items[known[0]]["image"]).affine
    axes = profiles.axis_names(first_affine)
    result["axes"] = axes
    ys = [labels[i] for i in known]
    mean_images = profiles.class_mean_maps([images[i] for i in known], ys)
    # The mean of all scans' region maps is not a label map: take each voxel's most common label.
    stacked = np.stack([region_maps[i] for i in known])
    values = np.unique(stacked)
    majority = values[np.argmax(np.stack([(stacked == v).sum(0) for v in values]), axis=0)]
    for method in methods:
        have = [i for i in known if i in kept[method]]
        if not have:
            continue
        ys = [labels[i] for i in have]
        means = profiles.class_mean_maps([kept[method][i] for i in have], ys)
        for name, array in means.items():
            nib.save(
                nib.Nifti1Image(array.astype(np.float32), first_affine), out / "class_means" / f"{method}_{name}.nii.gz"
            )
        for name in ("AD", "AD_minus_CN"):
            if name in means:
                background = mean_images.get("AD", next(iter(mean_images.values())))
                title = f"{METHOD_TITLES[method]}: mean map, {name.replace('_minus_', ' minus ')}"
                png = out / "figures" / f"class_mean_{method}_{name}.png"
                figures.overlay_figure(background, means[name], np.clip(majority, 0, None), first_affine, png, title)
                result["class_means"].setdefault(method, []).append(str(png.relative_to(out)))
        per_axis = {
            str(axis): profiles.class_profiles([profiles.depth_profile(kept[method][i], axis) for i in have], ys)
            for axis in range(3)
        }
        result["depth_profiles"][method] = per_axis
        png = out / "figures" / f"depth_profile_{method}.png"
        profiles.profile_figure(per_axis, axes, png, title=f"{METHOD_TITLES[method]}: relevance along each axis")
    ys = [labels[i] for i in known]
    names = {**_label_names(), 0: "rest_of_brain", -1: "outside_brain"}
    channels = profiles.channel_differences([activations[i] for i in known], ys, [region_maps[i] for i in known], names)
    result["channels"] = channels
    if channels:
        profiles.channel_figure(channels, out / "figures" / "layer4_channels.png")
    return result


def _label_names() -> dict[int, str]:
    from preprocessing.synthetic import REGION_LABELS

    return dict(REGION_LABELS)


def _write_rows(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main(args: argparse.Namespace) -> int:
    from analysis.explain.summary import summary_text

    model_file = args.model_dir / "model.pt" if args.model_dir.is_dir() else args.model_dir
    if not model_file.exists():
        raise SystemExit(f"explain: {model_file} does not exist; pass the --ckpt_dir of a finished training.")
    items = collect_items(args.datalist, args.partition, args.images)
    settings = MapSettings(
        target_layer=args.target_layer,
        occlusion_mask=args.occlusion_mask,
        occlusion_overlap=args.occlusion_overlap,
        ig_steps=args.ig_steps,
    )
    summary = explain_items(
        items,
        model_file,
        args.out,
        args.methods,
        settings,
        truth_dir=args.truth_dir,
        figure_scans=args.figure_scans,
        randomisation_scans=args.randomisation_scans,
        native=not args.no_native,
        margin=args.margin,
        syn=args.syn,
        resamples=args.resamples,
        seed=args.seed,
        occlusion_scans=args.occlusion_scans,
        randomisation_methods=args.randomisation_methods,
    )
    print(summary_text(summary))
    print(
        f"Maps, figures, per_scan.csv and summary.json are in {args.out} "
        f"({summary['seconds_maps']:.0f} s maps, {summary['seconds_randomisation']:.0f} s randomisation check)."
    )
    return 0
