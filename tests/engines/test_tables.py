from __future__ import annotations

from resbench.engines.tables import models_frame

CORROBORATED = {"wan2.2-t2v-a14b", "wan2.2-ti2v-5b", "flux.1-dev"}


def test_every_component_reports_its_published_count():
    frame = models_frame()
    assert set(frame["model"]) > CORROBORATED
    exact = frame[frame["model"].isin(CORROBORATED)]
    assert len(exact) == 4 + 3 + 4
    assert (exact["params"] == exact["published_params"]).all()
    # Model cards round (LTX-2's "19B" DiT, Gemma 3's "12B"): within 2 %.
    rounded = frame[~frame["model"].isin(CORROBORATED) & frame["published_params"].notna()]
    assert len(rounded) >= 2
    assert ((rounded["params"] - rounded["published_params"]).abs()
            < 0.02 * rounded["published_params"]).all()
    wan = frame[frame["model"] == "wan2.2-t2v-a14b"].set_index("component")
    assert wan.loc["transformer", "class"] == "WanTransformer3DModel"
    assert wan.loc["transformer", "blocks"] == 40
    # 40 blocks of 702.9 MB + the rest (bf16 with the fp32-kept modules): ~28.6 GB.
    assert 28.5 < wan.loc["transformer", "weights_gb"] < 28.7
    assert wan.loc["vae", "dtype"] == "float32"
