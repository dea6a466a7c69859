"""The BIOMEDICA evaluation suite (Lozano et al., arXiv:2501.07171, CVPR 2025).

40 tasks: 35 zero-shot classification tasks from 21 datasets (pathology, radiology, ophthalmology,
dermatology, surgery, molecular / cell biology, parasitology), 4 coarse-grained microscopy tasks from
µ-Bench Perception (the paper's Table 5: domain, modality, sub-modality, stain) and retrieval on
BioMed-Flickr (Table 4: Recall@1/10/100, both directions).

The public eval set is ``BIOMEDICA/Biomedica2025EvalSet`` (ungated) in the Parquet layout of
:mod:`..evalset`, one folder per suite. Eight suites are known from public material: MedMNIST,
PatchCamelyon, uBench (µ-Bench), LC25000, CheXpert, RSNA, CATARACTS and Dresden. The exact
``task`` values inside a suite are read from the data when it is present (``suite/<task>``); the
two confirmed by name in public material are registered statically (``medmnist/DermaMNIST``,
``medmnist/OrganAMNIST``), as is PatchCamelyon (one task). uBench rows whose task is ``unknown``
carry no real label and are skipped, as are rows with fewer than two options.
"""
from __future__ import annotations

from dataclasses import dataclass

from biomedica_hf.eval.evalset import task_names
from biomedica_hf.eval.retrieval_data import RetrievalSource
from biomedica_hf.eval.tasks.base import EVALSET_REPO, DataContext, SuiteSource, Task

PAPER = "BIOMEDICA (Lozano et al., arXiv:2501.07171, CVPR 2025)"


@dataclass(frozen=True)
class Suite:
    """One folder of the eval set."""

    name: str
    domain: str
    dataset: str
    reference: str
    skip_tasks: frozenset[str] = frozenset()


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("medmnist", "radiology", "MedMNIST v2", "Yang et al., Scientific Data 2023 (CC BY 4.0; DermaMNIST CC BY-NC 4.0)"),
    Suite("patchcamelyon", "pathology", "PatchCamelyon", "Veeling et al., MICCAI 2018 (CC0)"),
    Suite("lc25000", "pathology", "LC25000", "Borkowski et al., arXiv:1912.12142 (lung and colon histopathology)"),
    Suite("ubench", "microscopy", "µ-Bench", "Lozano, Nirschl et al., NeurIPS 2024 D&B (CC BY-SA 4.0 card)",
          skip_tasks=frozenset({"unknown"})),
    Suite("chexpert", "radiology", "CheXpert", "Irvin et al., AAAI 2019 (research-use terms)"),
    Suite("rsna", "radiology", "RSNA Pneumonia Detection", "RSNA 2018 challenge (challenge terms)"),
    Suite("cataracts", "surgery", "CATARACTS", "Al Hajj et al., MedIA 2019 (challenge terms)"),
    Suite("dresden", "surgery", "Dresden Surgical Anatomy Dataset", "Carstens et al., Scientific Data 2023"),
]}

# MedMNIST sub-datasets span several of the paper's domains
MEDMNIST_DOMAINS = {
    "PathMNIST": "pathology", "ChestMNIST": "radiology", "DermaMNIST": "dermatology", "OCTMNIST": "ophthalmology",
    "PneumoniaMNIST": "radiology", "RetinaMNIST": "ophthalmology", "BreastMNIST": "radiology",
    "BloodMNIST": "cell biology", "TissueMNIST": "pathology", "OrganAMNIST": "radiology",
    "OrganCMNIST": "radiology", "OrganSMNIST": "radiology",
}

MICROBENCH_COARSE = ("domain", "modality", "submodality", "stain")   # paper Table 5 (DM, MD, SMD, ST)

# Prompt templates per domain ("{}" = the option text), ensembled with the bare option text. The suite's
# options are short labels ("adipose", "malignant"); a sentence around them is what CLIP models were trained on.
DOMAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "radiology": ("{}", "a radiology image showing {}.", "a medical scan of {}."),
    "pathology": ("{}", "a histopathology image of {}.", "an H&E stained tissue section showing {}."),
    "dermatology": ("{}", "a dermatoscopy image of {}.", "a photo of a skin lesion: {}."),
    "ophthalmology": ("{}", "a retinal image showing {}.", "an eye scan showing {}."),
    "cell biology": ("{}", "a microscopy image of {}.", "a blood smear showing {}."),
    "microscopy": ("{}", "a microscopy image of {}.", "a light or electron micrograph showing {}."),
    "surgery": ("{}", "a surgical video frame showing {}.", "an endoscopic image of {}."),
}


def suite_task(suite: Suite, task: str | None, name: str | None = None) -> Task:
    """A zero-shot task reading rows of ``task`` (None: the whole suite) from one suite."""
    domain = MEDMNIST_DOMAINS.get(task or "", suite.domain) if suite.name == "medmnist" else suite.domain
    label = task or suite.dataset
    return Task(name=name or f"{suite.name}/{task}", domain=domain, kind="zero-shot",
                source=SuiteSource(suite.name), task_filter=task, templates=DOMAIN_TEMPLATES.get(domain, ("{}",)),
                dataset_name=f"{suite.dataset}: {label}" if task and label != suite.dataset else suite.dataset,
                dataset_type=EVALSET_REPO, description=f"{suite.dataset} ({suite.name} suite of {EVALSET_REPO})",
                reference=f"{PAPER}; {suite.reference}")


STATIC_TASKS: list[Task] = [
    suite_task(SUITES["medmnist"], "DermaMNIST"),
    suite_task(SUITES["medmnist"], "OrganAMNIST"),
    suite_task(SUITES["patchcamelyon"], None, name="patchcamelyon/PatchCamelyon"),
    Task(name="biomedflickr", domain="retrieval", kind="retrieval",
         retrieval_source=RetrievalSource(name="biomedflickr"), dataset_name="BioMed-Flickr",
         dataset_type="BioMed-Flickr", primary_metric="mean_recall",
         description="Image-text retrieval, Recall@1/10/100 both directions (paper Table 4)",
         reference=f"{PAPER}, Table 4; data: DATA_DIR/biomedflickr (dataset folder or Parquet image + caption)"),
]


def discover_suite(suite_name: str, ctx: DataContext) -> list[Task]:
    """Every task of a suite present in the data (raises DataNotFoundError when the suite is absent)."""
    suite = SUITES[suite_name]
    files = SuiteSource(suite.name).files(ctx)
    static = {t.name: t for t in STATIC_TASKS}
    tasks = []
    for name in task_names(files):
        if name is None or name in suite.skip_tasks:
            continue
        full = f"{suite.name}/{name}"
        tasks.append(static.get(full) or suite_task(suite, name))
    if suite.name == "patchcamelyon" and len(tasks) == 1:
        tasks = [static["patchcamelyon/PatchCamelyon"]]
    return tasks
