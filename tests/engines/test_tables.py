from __future__ import annotations

import pandas as pd

from resbench.engines.tables import components_frame

# The seed models' counts (rounded on their cards) are checked in test_seed_models.py.
CORROBORATED = ("wan2.2-t2v-a14b", "wan2.2-ti2v-5b", "flux.1-dev")


def test_every_component_reports_its_published_count():
    frame = pd.concat([components_frame(name) for name in CORROBORATED], ignore_index=True)
    assert len(frame) == 4 + 3 + 4
    assert (frame["params"] == frame["published_params"]).all()
    assert (frame["params_err_pct"] == 0).all()
    wan = frame[frame["model"] == "wan2.2-t2v-a14b"].set_index("component")
    assert wan.loc["transformer", "class"] == "WanTransformer3DModel"
    assert wan.loc["transformer", "blocks"] == 40
    # 40 blocks of 702.9 MB + the rest (bf16 with the fp32-kept modules): ~28.6 GB.
    assert 28.5 < wan.loc["transformer", "weights_gb"] < 28.7
    assert wan.loc["vae", "dtype"] == "float32"
