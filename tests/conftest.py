"""Shared fixtures: the real data (the shared LGG copy), the real LiteMedSAM model, a fresh cache."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_data() -> Path | None:
    """$SAMHW_DATA, else data/kaggle_3m, else shared/datasets/lgg/kaggle_3m beside a parent folder."""
    if os.environ.get("SAMHW_DATA"):
        return Path(os.environ["SAMHW_DATA"])
    if (REPO / "data" / "kaggle_3m").is_dir():
        return REPO / "data" / "kaggle_3m"
    for parent in REPO.parents:
        candidate = parent / "shared" / "datasets" / "lgg" / "kaggle_3m"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = find_data()
    if found is None:
        message = "no LGG data: set SAMHW_DATA to a kaggle_3m folder"
        if os.environ.get("SAMHW_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def lite_model():
    from samhw.models import load_model

    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def real_slices(data_dir):
    """Four test-split tumor slices of four patients, spread over the split."""
    from samhw.data import load_dataset

    return load_dataset(data_dir, "test", limit=4)
