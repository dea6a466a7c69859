"""Shared test fixtures: paths to the real PMC data in ../shared/fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIOMEDICA_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
PMC = FIXTURES / "pmc"
ARTICLES = PMC / "articles"
FILELISTS = PMC / "filelists"
PUBMED = FIXTURES / "pubmed"


@pytest.fixture(scope="session")
def pmc_dir() -> Path:
    if not PMC.is_dir():
        pytest.skip(f"fixtures not found at {PMC}")
    return PMC


@pytest.fixture(scope="session")
def articles_dir(pmc_dir) -> Path:
    return ARTICLES


@pytest.fixture(scope="session")
def filelists_dir(pmc_dir) -> Path:
    return FILELISTS


@pytest.fixture(scope="session")
def pubmed_dir() -> Path:
    return PUBMED
