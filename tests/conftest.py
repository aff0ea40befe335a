"""Fixtures shared by the test modules."""

import pytest

from .shared_data import MISSING_OFFICIAL, OFFICIAL_DRDM


@pytest.fixture
def official_drdm_weights():
    """The authors' 2D DRDM checkpoint from ../shared, or a skip that says where it was looked for."""
    if not OFFICIAL_DRDM.is_file():
        pytest.skip(MISSING_OFFICIAL)
    return OFFICIAL_DRDM
