"""Published accuracy of diagnosing AD from structural MRI by eye, to set beside the model's metrics.

Only numbers read in the source (its abstract) are listed, each with its citation and population. The populations
differ from this study's (other cohorts, other scanners, clinical rather than ADNI diagnoses), so the table is a
context for the model's numbers, not a head-to-head comparison on the same scans.

Left out because the numbers could not be confirmed here, or do not answer "AD vs controls on MRI": Scheltens et al.
1992 (J Neurol Neurosurg Psychiatry 55:967-972; the abstract gives group differences, not sensitivity and
specificity), Westman et al. 2011 (AddNeuroMed visual ratings; results not readable here), the AUC-only study of
MTA on MR films (Aging Clin Exp Res 2005;17(1):8-13; AUC 0.89, no sensitivity/specificity), and the decade-specific
MTA cut-offs of a Dutch memory clinic (Eur Radiol 2017; rated on CT and against subjective cognitive impairment).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from analysis.bayes import Prevalence, likelihood_ratios, predictive_values


@dataclass(frozen=True)
class ClinicianReference:
    """Published sensitivity and specificity of a visual read of structural MRI for AD against controls."""

    key: str
    reader: str
    sensitivity: float
    specificity: float
    population: str
    citation: str
    url: str
    accuracy: float | None = None
    sensitivity_ci: tuple[float, float] | None = None
    specificity_ci: tuple[float, float] | None = None
    note: str = ""


CLINICIAN_REFERENCES: tuple[ClinicianReference, ...] = (
    ClinicianReference(
        key="mta_meta_analysis_2021",
        reader="Visual medial temporal lobe atrophy (MTA) rating scale, pooled",
        sensitivity=0.74,
        specificity=0.88,
        sensitivity_ci=(0.68, 0.79),
        specificity_ci=(0.83, 0.91),
        population=(
            "Systematic review and meta-analysis, 21 studies; AD vs healthy controls; bivariate random-effects "
            "pooled estimates (pooled AUC 0.88)"
        ),
        citation=(
            "Park HY, Park CR, Suh CH, Shim WH, Kim SJ. Diagnostic performance of the medial temporal lobe atrophy "
            "scale in patients with Alzheimer's disease: a systematic review and meta-analysis. "
            "Eur Radiol. 2021;31(12):9060-9072. "
            "doi:10.1007/s00330-021-08227-8 (PMID 34510246)"
        ),
        url="https://pubmed.ncbi.nlm.nih.gov/34510246/",
        note="",
    ),
    ClinicianReference(
        key="kloppel_2008_set1",
        reader="Radiologists' binary read of T1 MRI (median of six)",
        sensitivity=0.88,
        specificity=0.90,
        accuracy=0.89,
        population=(
            "Sporadic AD vs controls, first data set; six radiologists with different experience, "
            "accuracy ranging 65-95%"
        ),
        citation=(
            "Klöppel S, Stonnington CM, Barnes J, et al. Accuracy of dementia diagnosis: a direct comparison "
            "between radiologists and a computerized method. Brain. 2008;131(11):2969-2974. doi:10.1093/brain/awn239"
        ),
        url="https://pubmed.ncbi.nlm.nih.gov/18835868/",
    ),
    ClinicianReference(
        key="kloppel_2008_set2",
        reader="Radiologists' binary read of T1 MRI (median of six), second set",
        sensitivity=0.80,
        specificity=0.85,
        accuracy=0.83,
        population="Another set of sporadic AD and controls; radiologists' accuracy ranging 80-90%",
        citation=(
            "Klöppel S, Stonnington CM, Barnes J, et al. Accuracy of dementia diagnosis: a direct comparison "
            "between radiologists and a computerized method. Brain. 2008;131(11):2969-2974. doi:10.1093/brain/awn239"
        ),
        url="https://pubmed.ncbi.nlm.nih.gov/18835868/",
    ),
)


def at_prevalences(sensitivity: float, specificity: float, prevalences: Sequence[Prevalence]) -> dict[str, Any]:
    """Point estimates: likelihood ratios, and PPV/NPV at each prevalence, from a sensitivity and specificity."""
    lr_pos, lr_neg = likelihood_ratios(sensitivity, specificity)
    rows = []
    for prevalence in prevalences:
        ppv, npv = predictive_values(sensitivity, specificity, prevalence.value)
        rows.append(
            {"prevalence_key": prevalence.key, "prevalence": prevalence.value, "ppv": float(ppv), "npv": float(npv)}
        )
    return {
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "lr_positive": float(lr_pos),
        "lr_negative": float(lr_neg),
        "by_prevalence": rows,
    }


def clinician_comparison(
    prevalences: Sequence[Prevalence],
    model_sensitivity: float | None = None,
    model_specificity: float | None = None,
    model_label: str = "This model (posterior medians)",
    references: Sequence[ClinicianReference] = CLINICIAN_REFERENCES,
) -> list[dict[str, Any]]:
    """One row per published reader (and the model first, if given), each evaluated at the same prevalences."""
    rows = []
    if model_sensitivity is not None and model_specificity is not None:
        rows.append(
            {
                "key": "model",
                "reader": model_label,
                "sensitivity": model_sensitivity,
                "specificity": model_specificity,
                "population": "This study's test set",
                "citation": "",
                "url": "",
                **at_prevalences(model_sensitivity, model_specificity, prevalences),
            }
        )
    for reference in references:
        row = asdict(reference)
        row.update(at_prevalences(reference.sensitivity, reference.specificity, prevalences))
        rows.append(row)
    return rows
