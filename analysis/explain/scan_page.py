"""``python -m analysis scan-report``: one self-contained HTML page for one raw T1 scan (research use only).

The scan (a DICOM series folder or a NIfTI/MGZ file) goes through ``preprocessing.pipeline.process_scan`` with the
settings and QC thresholds of the model's plan, as the model's training volumes went through ``preprocessing run``;
the model-ready volume is loaded and normalised as the bundle's inference does. The page shows the scan, model and
plan, QC, the AD probability (and each cross-validation fold model's), the post-test probability of AD at a
prevalence (``analysis.bayes`` posteriors from the model's test confusion matrix), relevance maps on the scan's own
grid through both hippocampi and relevance per template region; pictures are embedded, so the page stands alone.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from markupsafe import Markup

import analysis  # noqa: F401  (loads the bundle's ``scripts`` package)
from analysis import bayes
from analysis.explain import figures
from analysis.templating import render

PAGE_NAME = "scan_report.html"
DEFAULT_METHODS = ("gradcam", "integrated_gradients")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")
RESEARCH_ONLY = ("Research software, not a medical device. This page is not validated for, and must not be used "
                 "for, clinical diagnosis or any decision about a person's care.")  # fmt: skip
_NUMBER = re.compile(r"-?[\d.]+%?|n/a|None")
FORCED_BANNER = "QC failed; shown because --force-qc was given"
CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.55em;margin-bottom:.2em}h2{border-bottom:2px solid #1f4e79;
padding-bottom:.2em;margin-top:1.8em}table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px
solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#eef3f8}td.num{text-align:right;
white-space:nowrap}.banner{padding:.7em 1em;border-radius:4px;margin:.6em 0}.warn{background:#fdecea;border:1px solid
#c0392b}.fail{background:#c0392b;color:#fff;font-weight:bold;font-size:1.1em}.info{background:#eef3f8;border:1px solid
#1f4e79}.big{font-size:1.35em;font-weight:bold}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}.small{font-size:.85em;color:#555}"""


def _fail(message: str) -> SystemExit:
    """One line, ``error: ...``, as the bundle and the preprocessing CLI print their refusals."""
    return SystemExit("error: " + " ".join(str(message).split()))


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%" if np.isfinite(value) else "n/a"


def _num(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "n/a"


def _scan_record(scan: Path) -> dict[str, str]:
    if not scan.exists():
        raise _fail(f"{scan}: no such file or folder; give a DICOM series folder or a .nii/.nii.gz/.mgz file")
    name = scan.name
    stem = next((name[: -len(s)] for s in VOLUME_SUFFIXES if name.endswith(s)), None)
    if scan.is_dir():
        return {"subject": "scan", "image_id": re.sub(r"[^A-Za-z0-9._-]", "_", name) or "dicom", "dicom_dir": str(scan)}
    if stem is None:
        raise _fail(f"{scan}: unsupported format; give a DICOM series folder or a {'/'.join(VOLUME_SUFFIXES)} file")
    return {"subject": "scan", "image_id": re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "volume", "nifti_path": str(scan)}


def _preprocess(record: Mapping[str, str], work: Path, overrides: Mapping[str, Any], qc: Mapping | None) -> dict:
    from preprocessing import pipeline

    # A stale conversion of another scan with the same name would be reused by convert_series: start clean.
    shutil.rmtree(work, ignore_errors=True)
    return pipeline.process_scan(record, str(work), overrides, make_qc=True, qc_thresholds=qc)


def _model_input(image_file: str) -> np.ndarray:
    """The model-ready volume as the bundle's inference feeds it: load transforms, then input normalisation."""
    from monai.transforms import Compose

    from scripts.plan import preprocess_section

    transform = Compose(list(preprocess_section("load_transforms")) + list(
        preprocess_section("model_input_normalization")))  # fmt: skip
    image = transform({"image": image_file})["image"]
    return np.asarray(image[0].detach().cpu().numpy(), dtype=np.float32)


def _fold_models(crossval_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(p.parent.parent.name[5:]), p) for p in crossval_dir.glob("fold_*/models/model.pt")
             if re.fullmatch(r"fold_\d+", p.parent.parent.name)]  # fmt: skip
    if not found:
        raise _fail(f"{crossval_dir}: no fold_<k>/models/model.pt; pass the --out folder of 'python -m analysis "
                    "crossval'")  # fmt: skip
    return sorted(found)


def _fold_probability(k: int, path: Path, plan: Mapping | None, volume: np.ndarray, device: str, index: int) -> dict:
    from analysis.explain import maps
    from scripts.plan import differences, read_plan

    changed = differences((plan or {}).get("settings", {}), (read_plan(path.parent) or {}).get("settings", {}))
    if changed:  # it was trained on volumes made otherwise: its probability for this volume would mean nothing
        return {"fold": k, "file": str(path), "note": f"other plan ({'; '.join(changed)})"}
    return {"fold": k, "file": str(path), "prob_AD": maps.predict_probability(maps.load_trained_model(path, device),
                                                                              volume, index)}  # fmt: skip


def _read_confusion(eval_dir: Path) -> dict[str, Any]:
    """``tp, fn, tn, fp``, threshold and counts from an evaluation's metrics.json (scripts/evaluation.py)."""
    path = eval_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        (tn, fp), (fn, tp) = metrics["confusion_matrix"]["rows_true_cols_pred"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _fail(f"{path}: not an evaluation's metrics.json ({type(error).__name__}: {error}); pass --eval-dir "
                    "<output_dir of 'monai.bundle run evaluating'>") from None  # fmt: skip
    counts = {"tp": int(tp), "fn": int(fn), "tn": int(tn), "fp": int(fp)}
    return {"counts": counts, "threshold": float(metrics.get("threshold", 0.5)), "file": str(path),
            "n": metrics.get("n"), "n_subjects": metrics.get("n_subjects")}  # fmt: skip


def _post_test(probability: float, confusion: Mapping[str, Any], prevalence: bayes.Prevalence, seed: int) -> dict:
    result = bayes.bayesian_analysis(confusion["counts"], [prevalence], seed=seed)
    row = result["by_prevalence"][0]
    positive = probability >= confusion["threshold"]
    # Positive test: P(AD | positive) = PPV; negative: P(AD | negative) = 1 - NPV.
    value = row["ppv"] if positive else row["p_ad_given_negative"]
    return {"positive": bool(positive), "post_test": value, "prevalence": dataclasses.asdict(prevalence),
            "sensitivity": result["sensitivity"], "specificity": result["specificity"], **confusion}  # fmt: skip


def _picture(path: str | Path, alt: str, caption: str = "") -> dict[str, str]:
    """A PNG to embed in the page: base64 data, alt text and caption (none when empty)."""
    return {"data": base64.b64encode(Path(path).read_bytes()).decode("ascii"), "alt": alt, "caption": caption}


def _numeric(cell: Any) -> bool:
    """Whether a table cell is a number (or a percentage, n/a), right-aligned on the page."""
    return bool(_NUMBER.fullmatch(str(cell)))


def _interval(entry: Mapping[str, float]) -> str:
    return f"{_pct(entry['median'])} (95% credible interval {_pct(entry['ci_low'])}\u2013{_pct(entry['ci_high'])})"


def build_scan_page(scan: Path, model_dir: Path, out: Path, prevalence: float | None = None,
                    eval_dir: Path | None = None, crossval_dir: Path | None = None, force_qc: bool = False,
                    methods: Sequence[str] = DEFAULT_METHODS, settings: Any = None, seed: int = 0) -> Path:  # fmt: skip
    """Preprocess ``scan`` with the plan of ``model_dir/model.pt``, predict, explain and write ``out/scan_report.html``.

    Raises SystemExit (one line naming the file, the reason and the fix) for an unreadable or failed scan, a scan
    that fails QC (unless ``force_qc``), a missing model, or an ``eval_dir``/``crossval_dir`` without results.
    ``out/work`` holds the preprocessing outputs (replaced on every run), ``out/maps`` the maps on the scan's grid.
    """
    import torch

    from analysis.explain import maps, regions
    from scripts import plan as plan_mod

    scan, model_dir, out = Path(scan), Path(model_dir), Path(out)
    started = time.perf_counter()
    model_file = model_dir / "model.pt"
    if not model_file.is_file():
        raise _fail(f"{model_file}: no trained model; pass --model-dir <the ckpt_dir of training, holding model.pt>")
    if prevalence is not None and not 0 < float(prevalence) < 1:
        raise _fail(f"--prevalence must be strictly between 0 and 1, got {prevalence}")
    unknown = [m for m in methods if m not in maps.METHODS]
    if unknown or not methods:
        raise _fail(f"unknown or no relevance method(s) {unknown}; choose from {', '.join(maps.METHODS)}")
    prior = bayes.user_prevalence(float(prevalence)) if prevalence is not None else bayes.MEMORY_CLINIC
    if eval_dir is None and (model_dir.parent / "eval" / "metrics.json").is_file():
        eval_dir = model_dir.parent / "eval"
    confusion = _read_confusion(Path(eval_dir)) if eval_dir is not None else None
    folds = _fold_models(Path(crossval_dir)) if crossval_dir is not None else []
    record = _scan_record(scan)
    settings = settings or maps.MapSettings()

    plan = plan_mod.model_plan(model_file)  # warns (and the page says) when the model has none
    overrides = plan_mod.chain_overrides_for_model(plan)
    row = _preprocess(record, out / "work", overrides, (plan or {}).get("qc"))
    if row["status"] == "failed":
        fix = ("check that the folder holds exactly one complete DICOM series" if "DICOM conversion" in
               str(row.get("error")) else "check that it is a readable 3D T1-weighted scan (NIfTI, MGZ or a DICOM "
               "series folder) and that the model's plan can be run here")  # fmt: skip
        raise _fail(f"{scan}: preprocessing failed ({row.get('error')}); {fix}")
    qc_failed = row["status"] == "qc_failed"
    if qc_failed and not force_qc:
        raise _fail(f"{scan}: refused by quality control ({row.get('qc_reasons')}); see the QC picture "
                    f"{row.get('qc')}, or pass --force-qc to build the page anyway")  # fmt: skip
    seconds = {"preprocessing": time.perf_counter() - started}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    volume = _model_input(row["output"])
    model = maps.load_trained_model(model_file, device)
    probability = maps.predict_probability(model, volume, settings.class_index)
    fold_rows = [_fold_probability(k, path, plan, volume, device, settings.class_index) for k, path in folds]
    post_test = _post_test(probability, confusion, prior, seed) if confusion else None
    relevance = maps.compute_maps(model, volume, tuple(methods), settings)
    model_image = nib.load(row["output"])
    brain_mask = np.asarray(nib.load(row["mask"]).dataobj) > 0.5
    labels = regions.template_regions_on_grid(model_image, brain_mask=brain_mask, seed=seed)
    by_region = {m: regions.relevance_by_region(values, labels, brain_mask) for m, values in relevance.items()}
    native = nib.load(row["input"])
    native_image = np.squeeze(np.asarray(native.dataobj, dtype=np.float32))
    (out / "maps").mkdir(parents=True, exist_ok=True)
    native_maps = {}
    # Saved too, so the maps can be looked at in a viewer over the scan; labels by nearest neighbour (order 0).
    for name, values, order in [("regions", labels, 0)] + [(m, v, 1) for m, v in relevance.items()]:
        mapped = regions.to_native_grid(values, model_image.affine, native, order=order)
        nib.save(mapped, out / "maps" / f"{name}_native.nii.gz")
        native_maps[name] = np.asarray(mapped.dataobj)
    native_labels = np.rint(native_maps.pop("regions")).astype(np.int16)
    seconds["maps_and_regions"] = time.perf_counter() - started - seconds["preprocessing"]
    fig_dir = out / "figures"
    centres = figures.hippocampus_centres(native_labels)
    overlays = {m: figures.overlay_figure(native_image, native_maps[m], native_labels, native.affine,
                                          fig_dir / f"overlay_{m}.png", title=f"{maps.METHOD_TITLES[m]} on this "
                                          f"scan (AD probability {probability:.2f})", centres=centres)
                for m in native_maps}  # fmt: skip
    methods_png = figures.methods_figure(native_image, native_maps, native_labels, native.affine,
                                         fig_dir / "methods.png")  # fmt: skip
    seconds["total"] = time.perf_counter() - started

    summary = {
        "scan": str(scan), "format": "DICOM series" if "dicom_dir" in record else "NIfTI/MGZ file",
        "native_file": row["input"], "native_shape": list(native_image.shape),
        "native_voxel_mm": [round(float(v), 3) for v in np.sqrt((native.affine[:3, :3] ** 2).sum(axis=0))],
        "native_orientation": "".join(c or "?" for c in nib.aff2axcodes(native.affine)),
        "model_file": str(model_file), "model_sha256": plan_mod.file_sha256(model_file),
        "architecture": getattr(model, "arch", "?"), "plan": plan, "map_settings": dataclasses.asdict(settings),
        "qc_status": row.get("qc_status"), "qc_reasons": row.get("qc_reasons") or "", "forced_qc": qc_failed,
        "prob_AD": probability, "threshold": confusion["threshold"] if confusion else 0.5, "folds": fold_rows,
        "post_test": post_test, "eval_dir": str(eval_dir or ""),
        "regions": by_region, "hippocampus_centres_native": centres, "seconds": seconds,
    }  # fmt: skip
    pictures = {"qc": row.get("qc"), "overlays": overlays, "methods": methods_png}
    out.mkdir(parents=True, exist_ok=True)
    (out / "scan_report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    page = out / PAGE_NAME
    page.write_text(_page(summary, pictures, model_dir))
    return page


def _scan_rows(s: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The scan, its grid and the model, as (name, value) rows."""
    grid = f"{'x'.join(map(str, s['native_shape']))} voxels of {' x '.join(f'{v:g}' for v in s['native_voxel_mm'])} mm"
    return [("scan", s["scan"]), ("format", s["format"]), ("native volume", s["native_file"]),
            ("native grid", f"{grid}, stored {s['native_orientation']}"), ("model", s["model_file"]),
            ("weights SHA-256", s["model_sha256"]), ("architecture", s["architecture"])]  # fmt: skip


def _plan_rows(plan: Mapping[str, Any] | None) -> list[tuple[str, Any]] | None:
    """The settings of the model's plan, its skull-stripper weights and date; None without a plan."""
    if plan is None:
        return None
    settings = [(k, json.dumps(v)) for k, v in plan["settings"].items()]
    weights = plan.get("skull_stripper_weights") or {}
    if weights:
        settings.append(("skull-stripper weights", f"{weights.get('file')} (SHA-256 {weights.get('sha256')})"))
    settings.append(("plan created", plan.get("created", "?")))
    return settings


def _fold_context(s: Mapping[str, Any]) -> dict[str, Any]:
    """Each fold model's probability (or why it has none), and their mean, min and max."""
    rows = [(f["fold"], f"{f['prob_AD']:.3f}" if "prob_AD" in f else f["note"], f["file"]) for f in s["folds"]]
    probs = [f["prob_AD"] for f in s["folds"] if "prob_AD" in f]
    stats = {"mean": np.mean(probs), "min": min(probs), "max": max(probs), "n": len(probs)} if probs else None
    return {"fold_rows": rows, "fold_probs": stats}


def _post_test_context(t: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The post-test paragraph's texts: P(AD) after the test with its interval, and what it rests on."""
    if t is None:
        return None
    prev = t["prevalence"]
    return {
        "interval": _interval(t["post_test"]), "result": "positive (AD)" if t["positive"] else "negative (CN)",
        "threshold": t["threshold"], "prevalence": _pct(prev["value"]), "label": prev["label"],
        "what": "PPV, P(AD | positive)" if t["positive"] else "1 - NPV, P(AD | negative)",
        "sensitivity": _interval(t["sensitivity"]), "specificity": _interval(t["specificity"]), "file": t["file"],
        "counts": t["counts"], "n": t.get("n"), "n_subjects": t.get("n_subjects"), "source": prev["source"],
        "note": prev.get("note") or "",
    }  # fmt: skip


def _region_table(s: Mapping[str, Any]) -> dict[str, Any]:
    """Fraction and density gain per region (rows) and method (columns)."""
    from analysis.explain.maps import METHOD_TITLES
    from analysis.explain.regions import REGION_TITLES

    by_region = s["regions"]
    methods = list(by_region)
    names = list(next(iter(by_region.values())))
    header = ["region"] + [
        f"{METHOD_TITLES.get(m, m)}: {what}" for m in methods for what in ("fraction", "density gain")
    ]
    rows = [[REGION_TITLES.get(name, name)] + [v for m in methods for v in (_pct(by_region[m][name]["fraction"]),
             _num(by_region[m][name]["density_gain"]))] for name in names]  # fmt: skip
    return {"region_header": header, "region_rows": rows}


def _call(s: Mapping[str, Any]) -> str:
    return f"predicted {'AD' if s['prob_AD'] >= s['threshold'] else 'CN'} at threshold {s['threshold']:g}"


def _headline(s: Mapping[str, Any]) -> str:
    """The result in one line, for the top of the page and the terminal."""
    line = f"AD probability {s['prob_AD']:.3f} ({_call(s)})"
    t = s["post_test"]
    if t:
        line += (f"; post-test probability of AD at a prevalence of {_pct(t['prevalence']['value'])} "
                 f"({t['prevalence']['short']}): {_interval(t['post_test'])}")  # fmt: skip
    else:
        line += "; no post-test probability (no evaluation found; --eval-dir)"
    return line + f"; QC {s['qc_status']}" + (f" ({FORCED_BANNER})" if s["forced_qc"] else "")


def _page(s: Mapping[str, Any], pictures: Mapping[str, Any], model_dir: Path) -> str:
    """The page, rendered from ``templates/scan_page.html.j2``."""
    from analysis.explain.maps import METHOD_TITLES

    overlays = [_picture(png, f"overlay {m}", f"{METHOD_TITLES.get(m, m)} on the scan's own grid, through the "
                         "centre of each hippocampus (template regions, white; ventricles, magenta).")
                for m, png in pictures["overlays"].items()]  # fmt: skip
    qc_png = pictures["qc"]
    qc_picture = None
    if qc_png and Path(qc_png).is_file():
        qc_picture = _picture(qc_png, "QC picture", "Top: the scan as read; bottom: the model-ready volume with the "
                              "brain mask outline (red). Neurological convention.")  # fmt: skip
    return render(
        "scan_page.html.j2",
        title=f"Scan report: {Path(s['scan']).name}",
        css=Markup(CSS),
        research_only=RESEARCH_ONLY,
        forced=s["forced_qc"],
        forced_banner=FORCED_BANNER,
        headline=_headline(s),
        scan_rows=_scan_rows(s),
        model_dir=model_dir,
        plan_rows=_plan_rows(s["plan"]),
        map_settings=list(s["map_settings"].items()),
        qc_status=s["qc_status"],
        qc_reasons=s["qc_reasons"],
        qc_picture=qc_picture,
        prob_AD=s["prob_AD"],
        call=_call(s),
        **_fold_context(s),
        post_test=_post_test_context(s["post_test"]),
        overlays=overlays,
        methods_picture=_picture(pictures["methods"], "methods", "The methods side by side, each on its own scale."),
        **_region_table(s),
        timing=", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in s["seconds"].items()),
        numeric=_numeric,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m analysis scan-report``."""
    parser.add_argument("--scan", type=Path, required=True, help="a DICOM series folder or a .nii/.nii.gz/.mgz file")
    parser.add_argument("--model-dir", type=Path, required=True, help="folder with model.pt (and its plan.json)")
    parser.add_argument("--out", type=Path, required=True, help="folder for scan_report.html, figures and maps")
    parser.add_argument("--prevalence", type=float, help="prevalence of AD (default: memory clinic, 0.461)")
    parser.add_argument("--eval-dir", type=Path, help="evaluation with metrics.json (default: <model-dir>/../eval)")
    parser.add_argument("--crossval-dir", type=Path, help="--out of 'crossval': every fold model's probability")
    parser.add_argument("--force-qc", action="store_true", help="build the page for a scan that fails QC")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="relevance methods: gradcam gradcampp occlusion integrated_gradients")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the template registration and posterior draws")


def main(args: argparse.Namespace) -> int:
    """Build the page and print its path and the headline numbers."""
    page = build_scan_page(args.scan, args.model_dir, args.out, prevalence=args.prevalence, eval_dir=args.eval_dir,
                           crossval_dir=args.crossval_dir, force_qc=args.force_qc, methods=tuple(args.methods),
                           seed=args.seed)  # fmt: skip
    summary = json.loads((page.parent / "scan_report.json").read_text())
    print(f"Scan report: {page}")
    print(_headline(summary) + ". Research use only.")
    return 0
