"""Files in ../shared (beside the repository root, wherever the clone sits): third-party weights
and reference key lists used by compatibility tests, never committed into the project."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL_DRDM = SHARED / "weights" / "drdm_cmr2d_official.pth"
DRDM_REFERENCE_KEYS = SHARED / "reference" / "drdm_official_state_dict.tsv"
MISSING_OFFICIAL = f"the authors' DRDM weights are not in {OFFICIAL_DRDM.parent}"
