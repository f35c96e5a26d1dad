from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from resbench.errors import InputError
from resbench.hardware import (
    NUMERIC_FIELDS,
    PRESETS,
    HardwareProfile,
    detect_profile,
    get_profile,
    load_profile,
    match_preset,
    profile_dict,
    profile_frame,
    profiles_frame,
    save_profile,
)

GiB = 2**30
H100 = PRESETS["h100-80g"]


def _toml(path: Path, profile: HardwareProfile = H100) -> str:
    save_profile(profile, path)
    return path.read_text()


def _write_edited(tmp_path: Path, old: str, new: str) -> Path:
    """The h100 preset as TOML with one line replaced."""
    path = tmp_path / "card.toml"
    text = _toml(path)
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_presets_are_the_seven_cards() -> None:
    assert set(PRESETS) == {"h100-80g", "h200-141g", "a100-80g", "l40s-48g", "rtx4090-24g",
                            "rtx3090-24g", "rtx5090-32g"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_toml_exactly(name: str, tmp_path: Path) -> None:
    profile = PRESETS[name]
    path = save_profile(profile, tmp_path / f"{name}.toml")
    loaded = load_profile(path)
    assert loaded == profile
    assert profile_dict(loaded) == profile_dict(profile)
    assert set(profile.provenance) == set(NUMERIC_FIELDS), "every field says where it came from"


def test_h100_preset_is_seeded_from_the_measured_reference() -> None:
    assert H100.memory_capacity_bytes == 85_017_493_504
    assert H100.h2d_pinned_bytes_per_s == 54.9e9
    assert H100.d2h_pageable_bytes_per_s == 11.9e9
    assert H100.gemm_flops_per_s == 729e12
    assert H100.pinned_alloc_s_per_byte * GiB == pytest.approx(0.67, rel=0.01)
    for field in ("memory_capacity_bytes", "h2d_pinned_bytes_per_s", "gemm_flops_per_s",
                  "copy_compute_slowdown", "duplex_copies"):
        assert H100.provenance[field] == "measured"
    assert H100.provenance["allocator_rounding_bytes"] == "spec"


def test_h100_preset_has_the_campaign_2_compute_constants() -> None:
    """fp32 GEMM/conv rates, elementwise efficiency and streamed pageable H2D, measured per
    kernel and per unit on the card (benchmarks/results/gpu_fidelity.md)."""
    assert H100.gemm_fp32_flops_per_s == 52e12
    assert H100.conv_fp32_flops_per_s == 150e12
    assert H100.elementwise_efficiency == 0.71
    assert H100.h2d_pageable_bytes_per_s == 4.7e9
    for field in ("gemm_fp32_flops_per_s", "conv_fp32_flops_per_s", "elementwise_efficiency",
                  "h2d_pageable_bytes_per_s"):
        assert H100.provenance[field] == "measured"
    for name, p in PRESETS.items():
        # fp32 work runs far below the bf16 tensor-core rate on every card.
        assert p.gemm_fp32_flops_per_s < p.gemm_flops_per_s / 2, name
        assert p.conv_fp32_flops_per_s < p.conv_flops_per_s, name
        assert 0 < p.elementwise_efficiency <= 1, name
        if name != "h100-80g":
            assert p.provenance["gemm_fp32_flops_per_s"] == "estimated", name


def test_profile_is_frozen_slotted_keyword_only_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        H100.gemm_flops_per_s = 1.0  # type: ignore[misc]
    assert not hasattr(H100, "__dict__")
    assert hash(H100) == hash(dataclasses.replace(H100))
    with pytest.raises(TypeError):
        HardwareProfile("x")  # type: ignore[misc]


def test_construction_validates_ranges() -> None:
    with pytest.raises(InputError, match="usable_fraction"):
        dataclasses.replace(H100, usable_fraction=1.5)
    with pytest.raises(InputError, match="copy_engines must be an integer"):
        dataclasses.replace(H100, copy_engines=2.5)
    with pytest.raises(InputError, match="provenance of gemm_flops_per_s"):
        dataclasses.replace(H100, provenance_pairs=(("gemm_flops_per_s", "guessed"),))


def test_usable_bytes_and_transfer_time_by_hand() -> None:
    card = dataclasses.replace(H100, usable_fraction=0.9, memory_capacity_bytes=80 * GiB,
                               h2d_pinned_bytes_per_s=50e9, h2d_pageable_bytes_per_s=5e9,
                               d2h_pinned_bytes_per_s=40e9, d2h_pageable_bytes_per_s=10e9,
                               transfer_latency_s=1e-5)
    assert card.usable_bytes == int(72 * GiB)
    assert card.transfer_time_s(100_000_000, "h2d", pinned=True) == pytest.approx(1e-5 + 2e-3)
    assert card.transfer_time_s(100_000_000, "h2d", pinned=False) == pytest.approx(1e-5 + 2e-2)
    assert card.transfer_time_s(100_000_000, "d2h", pinned=True) == pytest.approx(1e-5 + 2.5e-3)
    assert card.transfer_time_s(100_000_000, "d2h", pinned=False) == pytest.approx(1e-5 + 1e-2)
    assert card.transfer_time_s(0, "h2d") == 0.0
    with pytest.raises(InputError, match="direction"):
        card.transfer_time_s(1, "sideways")  # type: ignore[arg-type]


def test_with_capacity_returns_a_copy() -> None:
    small = H100.with_capacity(24 * GiB)
    assert small.memory_capacity_bytes == 24 * GiB
    assert small.usable_bytes == int(24 * GiB * H100.usable_fraction)
    assert small.provenance["memory_capacity_bytes"] == "spec"
    assert "24.00 GiB" in small.description
    assert H100.memory_capacity_bytes == 85_017_493_504
    assert small.gemm_flops_per_s == H100.gemm_flops_per_s


def test_sizes_may_be_written_with_units(tmp_path: Path) -> None:
    path = _write_edited(tmp_path, "memory_capacity_bytes = 85017493504",
                         'memory_capacity_bytes = "80GiB"')
    assert load_profile(path).memory_capacity_bytes == 80 * GiB


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("hbm_bytes_per_s = 2900000000000.0\n", "", "missing field 'hbm_bytes_per_s'"),
    ("kernel_launch_s = 1.1e-05", "kernel_launch_s = -1.0", "kernel_launch_s must be ≥ 0"),
    ("gemm_flops_per_s = 729000000000000.0", "gemm_flops_per_s = 0.0",
     "gemm_flops_per_s must be > 0"),
    ("gemm_flops_per_s = 729000000000000.0", 'gemm_flops_per_s = "fast"',
     "gemm_flops_per_s must be a number"),
    ("gemm_fp32_flops_per_s = 52000000000000.0\n", "",
     "missing field 'gemm_fp32_flops_per_s'"),
    ("elementwise_efficiency = 0.71", "elementwise_efficiency = 4.5",
     "elementwise_efficiency must be in (0, 4]"),
    ("elementwise_efficiency = 0.71", "elementwise_efficiency = 0.0",
     "elementwise_efficiency must be > 0"),
    ("duplex_copies = true", "duplex_copies = 1", "duplex_copies must be true or false"),
    ("copy_engines = 3", "copy_engines = 3\ngpu_count = 1", "unknown field 'gpu_count'"),
    ('copy_engines = "measured"', 'copy_engines = "guessed"', "provenance of copy_engines"),
    ("schema = 1", "schema = 2", "schema 2 found; this resbench reads schema 1"),
    ("schema = 1\n", "", "no `schema` key"),
    ('name = "h100-80g"', "name = [", "cannot read hardware profile"),
])
def test_bad_toml_names_the_field_and_the_file(tmp_path: Path, old: str, new: str,
                                               expected: str) -> None:
    path = _write_edited(tmp_path, old, new)
    with pytest.raises(InputError) as err:
        load_profile(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_field_error_lists_valid_fields(tmp_path: Path) -> None:
    path = _write_edited(tmp_path, "copy_engines = 3", "copy_engines = 3\ngpu_count = 1")
    with pytest.raises(InputError, match="valid fields: .*hbm_bytes_per_s"):
        load_profile(path)


def test_get_profile_by_name_or_path(tmp_path: Path) -> None:
    assert get_profile("H100-80G") is H100
    path = save_profile(PRESETS["rtx4090-24g"], tmp_path / "mine.toml")
    assert get_profile(str(path)) == PRESETS["rtx4090-24g"]
    with pytest.raises(InputError, match="no such hardware profile file"):
        get_profile(str(tmp_path / "absent.toml"))


def test_unknown_name_lists_presets_and_close_matches() -> None:
    with pytest.raises(InputError) as err:
        get_profile("h100")
    message = str(err.value)
    assert "did you mean h100-80g" in message
    assert all(name in message for name in PRESETS)


def test_profiles_frame_has_one_row_per_preset() -> None:
    frame = profiles_frame()
    assert list(frame["name"]) == list(PRESETS)
    row = frame.set_index("name").loc["h100-80g"]
    assert row["gemm_tflop_per_s"] == pytest.approx(729.0)
    assert row["h2d_pinned_gb_per_s"] == pytest.approx(54.9)
    assert row["memory_gib"] == pytest.approx(79.18, abs=0.01)
    assert "measured" in row["source"]


def test_profile_frame_gives_unit_and_provenance_of_every_field() -> None:
    frame = profile_frame(H100).set_index("field")
    assert set(NUMERIC_FIELDS) <= set(frame.index)
    assert frame.loc["h2d_pinned_bytes_per_s", "unit"] == "B/s"
    assert frame.loc["h2d_pinned_bytes_per_s", "readable"] == "54.90 GB/s"
    assert frame.loc["gemm_half_flops", "unit"] == "FLOP"
    assert frame.loc["duplex_copies", "readable"] == "true"
    assert frame.loc["gemm_fp32_flops_per_s", "readable"] == "52.0 TFLOP/s"
    assert frame.loc["elementwise_efficiency", "unit"] == "fraction"
    assert frame.loc["gemm_flops_per_s", "provenance"] == "measured"


@pytest.mark.parametrize(("device", "preset"), [
    ("NVIDIA H100 80GB HBM3", "h100-80g"), ("NVIDIA H100 PCIe", "h100-80g"),
    ("NVIDIA H200", "h200-141g"), ("NVIDIA A100-SXM4-80GB", "a100-80g"),
    ("NVIDIA L40S", "l40s-48g"), ("NVIDIA GeForce RTX 4090", "rtx4090-24g"),
    ("NVIDIA GeForce RTX 3090", "rtx3090-24g"), ("NVIDIA GeForce RTX 5090", "rtx5090-32g"),
    ("NVIDIA L40", None), ("Tesla T4", None),
])
def test_match_preset(device: str, preset: str | None) -> None:
    assert match_preset(device) == preset


def test_detect_profile_takes_the_capacity_from_the_driver(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA GeForce RTX 4090")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1, 25_000_000_000))
    detected = detect_profile()
    assert detected is not None
    assert detected.name == "rtx4090-24g"
    assert detected.memory_capacity_bytes == 25_000_000_000
    assert detected.provenance["memory_capacity_bytes"] == "measured"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    assert detect_profile() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_profile() is None
