"""Explanations of the trained classifier: relevance maps (MONAI Grad-CAM/Grad-CAM++/occlusion, Captum integrated
gradients), their share in known regions (hippocampi, medial temporal lobes, ventricles), randomisation sanity checks,
depth profiles, and a one-page report for one scan. Command line: ``python -m analysis explain -h`` and
``python -m analysis scan-report -h``.

Modules: ``maps`` (the four methods, model loading), ``sanity`` (cascading randomisation), ``regions`` (region maps on
the model grid, relevance per region, pointing game, native-grid mapping), ``figures`` (overlays, montage),
``run`` (a datalist partition: maps, class means, depth profiles, summary) and ``scan_page`` (one scan, one page).
"""
