"""Where the repository and the real test data are: ``../shared/fixtures`` beside the checkout, or
``$BIOMEDICA_SHARED/fixtures``."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("BIOMEDICA_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
PMC = FIXTURES / "pmc"
ARTICLES = PMC / "articles"
FILELISTS = PMC / "filelists"
PUBMED = FIXTURES / "pubmed"
