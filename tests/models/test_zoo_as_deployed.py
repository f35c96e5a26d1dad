"""The zoo's Wan2.2 and FLUX.1 DiTs compute exactly what diffusers' modules compute.

Tiny configs scaled by the same rules on both sides, the zoo's bf16 weights copied into the
diffusers module (cast as `from_pretrained(torch_dtype=bfloat16)` leaves it: Wan's time
embedder, modulation tables and norms in fp32), same inputs: the deployed numerics give a
bitwise-equal bf16 output, the original Wan2.2 repository's numerics (`-orig`) do not.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from resbench.engines.build import build_component as build_engine_component
from resbench.engines.build import materialize as materialize_engine
from resbench.engines.build import pipeline_configs
from resbench.engines.catalog import get_engine_model
from resbench.models import get_model, materialize
from resbench.models.base import build_component

SCALE = 0.05
# zoo name fragment → diffusers name fragment (W22 `WanModel` → `WanTransformer3DModel`)
RENAMES = [
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    (".self_attn.", ".attn1."), (".cross_attn.", ".attn2."), (".o.", ".to_out.0."),
    (".q.", ".to_q."), (".k.", ".to_k."), (".v.", ".to_v."), (".norm3.", ".norm2."),
    (".ffn.0.", ".ffn.net.0.proj."), (".ffn.2.", ".ffn.net.2."), ("head.head.", "proj_out."),
    ("head.modulation", "scale_shift_table"), (".modulation", ".scale_shift_table"),
]


def diffusers_name(name: str) -> str:
    for old, new in RENAMES:
        name = name.replace(old, new)
    return name


@cache
def zoo(model: str) -> nn.Module:
    return materialize(build_component(get_model(model).component("transformer"), SCALE), "cpu")


def flux_weights(zoo: nn.Module) -> dict[str, torch.Tensor]:
    """The zoo FLUX's weights under diffusers' names (BFL → `FluxTransformer2DModel`): fused
    qkv and single-block linear1 split, the final modulation's (shift, scale) swapped."""
    z, dim, out = zoo.state_dict(), zoo.cfg.hidden, {}
    for old, new in [("img_in", "x_embedder"), ("txt_in", "context_embedder"),
                     ("final_layer.linear", "proj_out")] + [
            (f"{zoo_name}.{layer}", f"time_text_embed.{name}_embedder.linear_{i}")
            for zoo_name, name in [("time_in", "timestep"), ("guidance_in", "guidance"),
                                   ("vector_in", "text")]
            for i, layer in ((1, "in_layer"), (2, "out_layer"))]:
        for s in ("weight", "bias"):
            out[f"{new}.{s}"] = z[f"{old}.{s}"]
    streams = {"img": ("norm1", "norm_q", "norm_k", ("to_q", "to_k", "to_v"), "to_out.0", "ff"),
               "txt": ("norm1_context", "norm_added_q", "norm_added_k",
                       ("add_q_proj", "add_k_proj", "add_v_proj"), "to_add_out", "ff_context")}
    for s in ("weight", "bias"):
        ada = z[f"final_layer.ada.{s}"]
        out[f"norm_out.linear.{s}"] = torch.cat([ada[dim:], ada[:dim]])
        for i in range(zoo.cfg.depth):
            p, q = f"double_blocks.{i}", f"transformer_blocks.{i}"
            for st, (mod, _, _, qkv, proj, ff) in streams.items():
                out[f"{q}.{mod}.linear.{s}"] = z[f"{p}.{st}.mod.lin.{s}"]
                for j, name in enumerate(qkv):
                    out[f"{q}.attn.{name}.{s}"] = z[f"{p}.{st}.qkv.{s}"][j * dim:(j + 1) * dim]
                out[f"{q}.attn.{proj}.{s}"] = z[f"{p}.{st}.proj.{s}"]
                out[f"{q}.{ff}.net.0.proj.{s}"] = z[f"{p}.{st}.mlp.fc1.{s}"]
                out[f"{q}.{ff}.net.2.{s}"] = z[f"{p}.{st}.mlp.fc2.{s}"]
        for i in range(zoo.cfg.depth_single):
            p, q = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
            out[f"{q}.norm.linear.{s}"] = z[f"{p}.modulation.lin.{s}"]
            for j, name in enumerate(("to_q", "to_k", "to_v")):
                out[f"{q}.attn.{name}.{s}"] = z[f"{p}.linear1.{s}"][j * dim:(j + 1) * dim]
            out[f"{q}.proj_mlp.{s}"] = z[f"{p}.linear1.{s}"][3 * dim:]
            out[f"{q}.proj_out.{s}"] = z[f"{p}.linear2.{s}"]
    for i in range(zoo.cfg.depth):
        for st, (_, qn, kn, *_rest) in streams.items():
            out[f"transformer_blocks.{i}.attn.{qn}.weight"] = z[f"double_blocks.{i}.{st}.q_norm.weight"]
            out[f"transformer_blocks.{i}.attn.{kn}.weight"] = z[f"double_blocks.{i}.{st}.k_norm.weight"]
    for i in range(zoo.cfg.depth_single):
        for n in ("q", "k"):
            out[f"single_transformer_blocks.{i}.attn.norm_{n}.weight"] = z[f"single_blocks.{i}.{n}_norm.weight"]
    return out


def diffusers_twin(model: str, renamed: dict[str, torch.Tensor]) -> nn.Module:
    engine = get_engine_model(model)
    config = pipeline_configs(engine, scale=SCALE)["transformer"]
    module = materialize_engine(build_engine_component(engine, "transformer", config,
                                                       torch.bfloat16), "cpu", name="transformer")
    state = module.state_dict()
    assert set(renamed) == set(state)
    module.load_state_dict({k: v.to(state[k].dtype) for k, v in renamed.items()})
    return module


@pytest.mark.parametrize("model", ["wan2.2-t2v-a14b", "wan2.2-ti2v-5b"])
def test_wan22_output_is_diffusers_bitwise(model: str) -> None:
    deployed, original = zoo(model), zoo(f"{model}-orig")
    diffusers = diffusers_twin(model, {diffusers_name(k): v
                                       for k, v in deployed.state_dict().items()})
    channels, grid = deployed.cfg.in_dim, (3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, *grid, generator=gen).bfloat16()
    text = torch.randn(1, 16, deployed.cfg.text_dim, generator=gen).bfloat16()
    t = torch.tensor([700.0])
    tokens = grid[0] * grid[1] * grid[2] // 4
    # diffusers' WanPipeline gives TI2V-5B a timestep per token (`expand_timesteps`)
    timestep = t.expand(1, tokens) if channels == 48 else t
    with torch.no_grad():
        want = diffusers(hidden_states=x, timestep=timestep, encoder_hidden_states=text,
                         return_dict=False)[0]
        got = deployed(x, t, {"text_encoder": text})
        orig = original(x, t, {"text_encoder": text})
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)
    assert not torch.equal(orig.to(want.dtype), want)


def test_flux_output_is_diffusers_bitwise() -> None:
    zoo_flux = zoo("flux.1-dev")
    diffusers = diffusers_twin("flux.1-dev", flux_weights(zoo_flux))
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = 1, 16, 8, 8
    x = torch.randn(b, c, h, w, generator=gen).bfloat16()
    text = torch.randn(1, 16, zoo_flux.cfg.context_in_dim, generator=gen).bfloat16()
    pooled = torch.randn(1, zoo_flux.cfg.vec_in_dim, generator=gen).bfloat16()
    packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(h // 2.0),
                                     torch.arange(w // 2.0), indexing="ij"), -1).reshape(-1, 3)
    with torch.no_grad():
        # diffusers embeds timestep and guidance as bf16 × 1000: 0.5 and 4.0 are exact there
        want = diffusers(hidden_states=packed, encoder_hidden_states=text,
                         pooled_projections=pooled, timestep=torch.tensor([0.5]),
                         guidance=torch.tensor([4.0]), img_ids=ids, txt_ids=torch.zeros(16, 3),
                         return_dict=False)[0]
        got = zoo_flux(x, torch.tensor([500.0]),
                       {"text_encoder_2": text, "text_encoder": pooled,
                        "guidance": torch.tensor([4.0])})
    want = want.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)
