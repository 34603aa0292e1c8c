"""Explanations of the trained classifier: relevance maps (MONAI Grad-CAM/Grad-CAM++/occlusion, Captum integrated
gradients), their share in known regions (hippocampi, medial temporal lobes, ventricles), randomisation sanity checks,
depth profiles, and a one-page report for one scan. Command line: ``python -m analysis explain -h`` and
``python -m analysis scan-report -h``.

Modules: ``maps`` (the four methods, model loading), ``sanity`` (cascading randomisation), ``regions`` (region maps on
the model grid, relevance per region, pointing game, native-grid mapping), ``registration`` (the ANTs worker behind
``regions.template_regions_on_grid``), ``figures`` (overlays, montage), ``items`` (the scans to explain), ``options``
(the options of ``explain``), ``run`` (a datalist partition: maps, class means, depth profiles, summary),
``summary`` (verdict, printed and HTML summary) and ``scan_page`` (one scan, one page). The HTML comes from the
Jinja2 templates in ``analysis/templates``.
"""
