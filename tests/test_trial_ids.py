"""Trial ids are the identity of results on disk: a refactor that changes how a study file is
loaded, expanded or dumped must not change them, or every finished study would re-run.

tests/data/trial_ids.json holds the ids of every shipped study (default, --smoke and each
profile), recorded before the driver redesign. A deliberate change to a study file changes its
ids: regenerate the entry for that study only, and say so in the commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raystudy.spec import load_study

EXPECTED = json.loads((Path(__file__).parent / "data" / "trial_ids.json").read_text())


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_trial_ids_unchanged(key):
    file, variant = key.rsplit(":", 1)
    kw = {"smoke": True} if variant == "smoke" else {}
    if variant.startswith("profile="):
        kw = {"profile": variant.split("=", 1)[1]}
    ids = sorted(t.trial_id for t in load_study(file, **kw).trials)
    assert ids == EXPECTED[key]
