"""Family detection on real-size key/shape signatures (meta tensors: no bytes, full shapes).

The signatures are written from the published LDM/SGM architectures and are themselves checked
against diffusers: converted with diffusers' own LDM->diffusers converter they must give exactly the
keys and shapes of diffusers' models built from the released configs. Detection is then compared
with diffusers' own single-file classifier (`infer_diffusers_model_type`).
"""

from __future__ import annotations

import pytest
import torch

from diffusion.checkpoint.detect import ModelFamily, detect_state_dict
from diffusion.checkpoint.errors import UnknownModelError, UnsupportedModelError
from diffusion.checkpoint.files import LazyStateDict

Shapes = dict[str, tuple[int, ...]]


# ---- real architectures as key -> shape tables -------------------------------------------------


def _linear(s: Shapes, name: str, out: int, inp: int, bias: bool = True) -> None:
    s[f"{name}.weight"] = (out, inp)
    if bias:
        s[f"{name}.bias"] = (out,)


def _conv(s: Shapes, name: str, out: int, inp: int, k: int) -> None:
    s[f"{name}.weight"] = (out, inp, k, k)
    s[f"{name}.bias"] = (out,)


def _norm(s: Shapes, name: str, c: int) -> None:
    s[f"{name}.weight"] = (c,)
    s[f"{name}.bias"] = (c,)


def ldm_unet_shapes(
    mc: int,
    mult: tuple[int, ...],
    depth: tuple[int, ...],
    mid_depth: int,
    ctx: int,
    linear: bool,
    adm: int | None = None,
    in_ch: int = 4,
    nres: int = 2,
) -> Shapes:
    """`openaimodel.UNetModel` keys; `depth` is the transformer depth per level (0: no attention)."""
    s: Shapes = {}
    ted = mc * 4
    _linear(s, "time_embed.0", ted, mc)
    _linear(s, "time_embed.2", ted, ted)
    if adm:
        _linear(s, "label_emb.0.0", ted, adm)
        _linear(s, "label_emb.0.2", ted, ted)

    def res(p: str, i: int, o: int) -> None:
        _norm(s, f"{p}.in_layers.0", i)
        _conv(s, f"{p}.in_layers.2", o, i, 3)
        _linear(s, f"{p}.emb_layers.1", o, ted)
        _norm(s, f"{p}.out_layers.0", o)
        _conv(s, f"{p}.out_layers.3", o, o, 3)
        if i != o:
            _conv(s, f"{p}.skip_connection", o, i, 1)

    def transformer(p: str, c: int, n: int) -> None:
        _norm(s, f"{p}.norm", c)
        for proj in ("proj_in", "proj_out"):
            _linear(s, f"{p}.{proj}", c, c) if linear else _conv(s, f"{p}.{proj}", c, c, 1)
        for d in range(n):
            b = f"{p}.transformer_blocks.{d}"
            for attn, kv in (("attn1", c), ("attn2", ctx)):
                _linear(s, f"{b}.{attn}.to_q", c, c, bias=False)
                _linear(s, f"{b}.{attn}.to_k", c, kv, bias=False)
                _linear(s, f"{b}.{attn}.to_v", c, kv, bias=False)
                _linear(s, f"{b}.{attn}.to_out.0", c, c)
            _linear(s, f"{b}.ff.net.0.proj", c * 8, c)
            _linear(s, f"{b}.ff.net.2", c, c * 4)
            for n_ in (1, 2, 3):
                _norm(s, f"{b}.norm{n_}", c)

    _conv(s, "input_blocks.0.0", mc, in_ch, 3)
    skips, ch, idx = [mc], mc, 1
    for level, m in enumerate(mult):
        for _ in range(nres):
            res(f"input_blocks.{idx}.0", ch, mc * m)
            ch = mc * m
            if depth[level]:
                transformer(f"input_blocks.{idx}.1", ch, depth[level])
            skips.append(ch)
            idx += 1
        if level != len(mult) - 1:
            _conv(s, f"input_blocks.{idx}.0.op", ch, ch, 3)
            skips.append(ch)
            idx += 1
    res("middle_block.0", ch, ch)
    transformer("middle_block.1", ch, mid_depth)
    res("middle_block.2", ch, ch)
    idx = 0
    for level in reversed(range(len(mult))):
        for j in range(nres + 1):
            res(f"output_blocks.{idx}.0", ch + skips.pop(), mc * mult[level])
            ch = mc * mult[level]
            sub = 1
            if depth[level]:
                transformer(f"output_blocks.{idx}.1", ch, depth[level])
                sub = 2
            if level and j == nres:
                _conv(s, f"output_blocks.{idx}.{sub}.conv", ch, ch, 3)
            idx += 1
    _norm(s, "out.0", mc)
    _conv(s, "out.2", 4, mc, 3)
    return s


def ldm_vae_shapes(ch: int = 128, mult: tuple[int, ...] = (1, 2, 4, 4), nres: int = 2, z: int = 4) -> Shapes:
    """`ldm.modules.diffusionmodules.model` Encoder/Decoder + quant convs."""
    s: Shapes = {}

    def res(p: str, i: int, o: int) -> None:
        _norm(s, f"{p}.norm1", i)
        _conv(s, f"{p}.conv1", o, i, 3)
        _norm(s, f"{p}.norm2", o)
        _conv(s, f"{p}.conv2", o, o, 3)
        if i != o:
            _conv(s, f"{p}.nin_shortcut", o, i, 1)

    def mid(p: str, c: int) -> None:
        res(f"{p}.mid.block_1", c, c)
        _norm(s, f"{p}.mid.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            _conv(s, f"{p}.mid.attn_1.{proj}", c, c, 1)
        res(f"{p}.mid.block_2", c, c)

    _conv(s, "encoder.conv_in", ch, 3, 3)
    c = ch
    for i, m in enumerate(mult):
        for j in range(nres):
            res(f"encoder.down.{i}.block.{j}", c, ch * m)
            c = ch * m
        if i != len(mult) - 1:
            _conv(s, f"encoder.down.{i}.downsample.conv", c, c, 3)
    mid("encoder", c)
    _norm(s, "encoder.norm_out", c)
    _conv(s, "encoder.conv_out", 2 * z, c, 3)
    _conv(s, "quant_conv", 2 * z, 2 * z, 1)
    _conv(s, "post_quant_conv", z, z, 1)
    _conv(s, "decoder.conv_in", c, z, 3)
    mid("decoder", c)
    for i in reversed(range(len(mult))):
        for j in range(nres + 1):
            res(f"decoder.up.{i}.block.{j}", c, ch * mult[i])
            c = ch * mult[i]
        if i:
            _conv(s, f"decoder.up.{i}.upsample.conv", c, c, 3)
    _norm(s, "decoder.norm_out", c)
    _conv(s, "decoder.conv_out", 3, c, 3)
    return s


def hf_clip_shapes(width: int, layers: int) -> Shapes:
    """transformers `CLIPTextModel` keys as SD single files store them (with `text_model.`)."""
    s: Shapes = {
        "text_model.embeddings.token_embedding.weight": (49408, width),
        "text_model.embeddings.position_embedding.weight": (77, width),
    }
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(s, f"{p}.self_attn.{proj}", width, width)
        _norm(s, f"{p}.layer_norm1", width)
        _norm(s, f"{p}.layer_norm2", width)
        _linear(s, f"{p}.mlp.fc1", 4 * width, width)
        _linear(s, f"{p}.mlp.fc2", width, 4 * width)
    _norm(s, "text_model.final_layer_norm", width)
    return s


def openclip_text_shapes(width: int, layers: int) -> Shapes:
    """open_clip `CLIP` text tower keys (`model.` level stripped)."""
    s: Shapes = {
        "token_embedding.weight": (49408, width),
        "positional_embedding": (77, width),
        "text_projection": (width, width),
        "logit_scale": (),
    }
    for i in range(layers):
        p = f"transformer.resblocks.{i}"
        s[f"{p}.attn.in_proj_weight"] = (3 * width, width)
        s[f"{p}.attn.in_proj_bias"] = (3 * width,)
        _linear(s, f"{p}.attn.out_proj", width, width)
        _norm(s, f"{p}.ln_1", width)
        _norm(s, f"{p}.ln_2", width)
        _linear(s, f"{p}.mlp.c_fc", 4 * width, width)
        _linear(s, f"{p}.mlp.c_proj", width, 4 * width)
    _norm(s, "ln_final", width)
    return s


def _prefixed(prefix: str, shapes: Shapes) -> Shapes:
    return {prefix + k: v for k, v in shapes.items()}


UNETS = {
    "sd15": dict(mc=320, mult=(1, 2, 4, 4), depth=(1, 1, 1, 0), mid_depth=1, ctx=768, linear=False),
    "sd2": dict(mc=320, mult=(1, 2, 4, 4), depth=(1, 1, 1, 0), mid_depth=1, ctx=1024, linear=True),
    "sdxl": dict(mc=320, mult=(1, 2, 4), depth=(0, 2, 10), mid_depth=10, ctx=2048, linear=True, adm=2816),
    "sdxl_refiner": dict(mc=384, mult=(1, 2, 4, 4), depth=(0, 4, 4, 0), mid_depth=4, ctx=1280, linear=True, adm=2560),
}


def real_checkpoint_shapes(family: str, in_ch: int = 4) -> Shapes:
    """A full single-file checkpoint of `family` at the released sizes."""
    s = _prefixed("model.diffusion_model.", ldm_unet_shapes(**UNETS[family], in_ch=in_ch))
    s.update(_prefixed("first_stage_model.", ldm_vae_shapes()))
    if family == "sd15":
        s.update(_prefixed("cond_stage_model.transformer.", hf_clip_shapes(768, 12)))
    elif family == "sd2":
        s.update(_prefixed("cond_stage_model.model.", openclip_text_shapes(1024, 24)))
    elif family == "sdxl":
        s.update(_prefixed("conditioner.embedders.0.transformer.", hf_clip_shapes(768, 12)))
        s.update(_prefixed("conditioner.embedders.1.model.", openclip_text_shapes(1280, 32)))
    else:
        s.update(_prefixed("conditioner.embedders.0.model.", openclip_text_shapes(1280, 32)))
    return s


def meta_dict(shapes: Shapes, **real: torch.Tensor) -> dict[str, torch.Tensor]:
    tensors = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    tensors.update(real)
    return tensors


V_PRED_KEY = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def real_checkpoint(family: str, in_ch: int = 4, **real: torch.Tensor) -> dict[str, torch.Tensor]:
    """Meta tensors, except the one bias the SD2 v-prediction check reads (zeros: an eps model)."""
    return meta_dict(real_checkpoint_shapes(family, in_ch), **{V_PRED_KEY: torch.zeros(320), **real})


# ---- the signatures are the real architectures -------------------------------------------------

DIFFUSERS_UNET_CONFIGS = {
    "sd15": dict(cross_attention_dim=768, attention_head_dim=8),
    "sd2": dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    "sdxl": dict(
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
    "sdxl_refiner": dict(
        block_out_channels=(384, 768, 1536, 1536),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=4,
        cross_attention_dim=1280,
        attention_head_dim=(6, 12, 24, 24),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2560,
    ),
}


def _shapes_of(sd: dict[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("family", sorted(UNETS))
def test_unet_signature_converts_to_the_diffusers_model(family: str) -> None:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with torch.device("meta"):
        model = UNet2DConditionModel(**DIFFUSERS_UNET_CONFIGS[family])
    checkpoint = meta_dict(_prefixed("model.diffusion_model.", ldm_unet_shapes(**UNETS[family])))
    converted = convert_ldm_unet_checkpoint(checkpoint, dict(model.config))
    assert _shapes_of(converted) == _shapes_of(model.state_dict())


def test_vae_signature_converts_to_the_diffusers_model() -> None:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    blocks = dict(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    with torch.device("meta"):
        model = AutoencoderKL(**blocks)
    converted = convert_ldm_vae_checkpoint(
        meta_dict(_prefixed("first_stage_model.", ldm_vae_shapes())), dict(model.config)
    )
    assert _shapes_of(converted) == _shapes_of(model.state_dict())


def test_clip_signature_is_the_transformers_model() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    shapes = {
        k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in _shapes_of(model.state_dict()).items()
    }
    shapes.pop("text_model.embeddings.position_ids", None)
    assert shapes == hf_clip_shapes(768, 12)


# ---- detection on real-size files ---------------------------------------------------------------

# diffusers' single-file model types for the same files, as an independent classifier.
DIFFUSERS_TYPES = {
    ("sd15", False): "v1",
    ("sd15", True): "inpainting",
    ("sd2", False): "v2",
    ("sd2", True): "inpainting_v2",
    ("sdxl", False): "xl_base",
    ("sdxl", True): "xl_inpaint",
    ("sdxl_refiner", False): "xl_refiner",
}


@pytest.mark.parametrize(("family", "inpaint"), sorted(DIFFUSERS_TYPES))
def test_real_size_checkpoints_are_classified_like_diffusers_does(family: str, inpaint: bool) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    tensors = real_checkpoint(family, in_ch=9 if inpaint else 4)
    info = detect_state_dict(LazyStateDict.from_tensors(tensors))

    assert infer_diffusers_model_type(tensors) == DIFFUSERS_TYPES[(family, inpaint)]
    assert info.family is ModelFamily(family)
    assert info.is_inpaint is inpaint
    assert info.latent_channels == 4
    assert info.latent_scale_factor == (0.13025 if family.startswith("sdxl") else 0.18215)


def test_components_are_found_at_their_prefixes() -> None:
    def components(family: str) -> dict[str, tuple[str, str]]:
        info = detect_state_dict(LazyStateDict.from_tensors(real_checkpoint(family)))
        return {name: (src.prefix, src.layout) for name, src in info.components.items()}

    unet_vae = {"unet": ("model.diffusion_model.", "ldm"), "vae": ("first_stage_model.", "ldm")}
    assert components("sd15") == {**unet_vae, "clip_l": ("cond_stage_model.transformer.", "hf")}
    assert components("sd2") == {**unet_vae, "clip_h": ("cond_stage_model.model.", "openclip")}
    assert components("sdxl") == {
        **unet_vae,
        "clip_l": ("conditioner.embedders.0.transformer.", "hf"),
        "clip_g": ("conditioner.embedders.1.model.", "openclip"),
    }
    assert components("sdxl_refiner") == {**unet_vae, "clip_g": ("conditioner.embedders.0.model.", "openclip")}


@pytest.mark.parametrize(("spread", "expected"), [(0.2, "v"), (0.05, "eps")])
def test_sd2_v_prediction_is_read_from_one_layer_norm_bias(spread: float, expected: str) -> None:
    bias = torch.randn(320, generator=torch.Generator().manual_seed(0))
    bias = (bias - bias.mean()) / bias.std() * spread
    tensors = real_checkpoint("sd2", **{V_PRED_KEY: bias})
    assert detect_state_dict(LazyStateDict.from_tensors(tensors)).prediction == expected


def test_sd2_inpainting_models_are_eps_whatever_the_statistic() -> None:
    tensors = real_checkpoint("sd2", in_ch=9, **{V_PRED_KEY: torch.randn(320)})
    assert detect_state_dict(LazyStateDict.from_tensors(tensors)).prediction == "eps"


@pytest.mark.parametrize(("markers", "expected"), [((), "eps"), (("v_pred",), "v"), (("edm_mean", "edm_std"), "edm")])
def test_sdxl_prediction_comes_from_marker_keys(markers: tuple[str, ...], expected: str) -> None:
    tensors = real_checkpoint("sdxl", **{m: torch.zeros(1) for m in markers})
    assert detect_state_dict(LazyStateDict.from_tensors(tensors)).prediction == expected


def test_sd1_is_eps() -> None:
    tensors = real_checkpoint("sd15", **{V_PRED_KEY: torch.randn(320)})
    assert detect_state_dict(LazyStateDict.from_tensors(tensors)).prediction == "eps"


# ---- other file kinds -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["first_stage_model.", ""])
def test_standalone_vae_files_are_recognised(prefix: str) -> None:
    info = detect_state_dict(LazyStateDict.from_tensors(meta_dict(_prefixed(prefix, ldm_vae_shapes()))))
    assert info.family is None
    assert info.latent_channels == 4
    assert {n: (s.prefix, s.layout) for n, s in info.components.items()} == {"vae": (prefix, "ldm")}


def test_diffusers_layout_vae_file_is_recognised() -> None:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        model = AutoencoderKL(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
        )
    info = detect_state_dict(LazyStateDict.from_tensors(model.state_dict()))
    assert {n: (s.prefix, s.layout) for n, s in info.components.items()} == {"vae": ("", "diffusers")}


def test_unet_only_file_is_a_diffusion_model_of_its_family() -> None:
    info = detect_state_dict(LazyStateDict.from_tensors(meta_dict(ldm_unet_shapes(**UNETS["sdxl"]))))
    assert info.family is ModelFamily.SDXL
    assert {n: s.prefix for n, s in info.components.items()} == {"unet": ""}


@pytest.mark.parametrize(
    ("key", "family"),
    [
        ("model.diffusion_model.double_layers.0.attn.w1q.weight", "AuraFlow"),
        ("clf.1.weight", "Stable Cascade"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "LoRA"),
    ],
)
def test_foreign_families_are_named(key: str, family: str) -> None:
    with pytest.raises(UnsupportedModelError) as err:
        detect_state_dict(LazyStateDict.from_tensors({key: torch.empty(4, 4, device="meta")}))
    assert family in err.value.family
    assert family in str(err.value)


@pytest.mark.parametrize(
    ("key", "family"),
    [
        ("joint_blocks.0.x_block.attn.qkv.weight", ModelFamily.SD3),
        ("double_blocks.0.img_attn.qkv.weight", ModelFamily.FLUX),
    ],
)
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["diffusion_models file", "all-in-one"])
def test_flow_transformers_are_found_with_or_without_the_checkpoint_prefix(
    key: str, family: ModelFamily, prefix: str
) -> None:
    info = detect_state_dict(LazyStateDict.from_tensors({prefix + key: torch.empty(4, 4, device="meta")}))
    assert (info.family, info.prediction, info.latent_channels) == (family, "flow", 16)
    assert {n: (s.prefix, s.layout) for n, s in info.components.items()} == {"unet": (prefix, family.value)}
    assert info.latent_scale_factor == {ModelFamily.SD3: 1.5305, ModelFamily.FLUX: 0.3611}[family]


@pytest.mark.parametrize(
    ("key", "vae_prefix"),
    [("double_blocks.0.img_attn.qkv.weight", "vae."), ("joint_blocks.0.x_block.attn.qkv.weight", "first_stage_model.")],
)
def test_an_all_in_one_transformer_file_finds_its_vae_where_comfyui_saves_it(key: str, vae_prefix: str) -> None:
    keys = [
        f"model.diffusion_model.{key}",
        f"{vae_prefix}encoder.conv_in.weight",
        f"{vae_prefix}decoder.conv_in.weight",
    ]
    info = detect_state_dict(LazyStateDict.from_tensors({k: torch.empty(4, 4, 3, 3, device="meta") for k in keys}))
    assert info.components["vae"].prefix == vae_prefix


def test_sd2_unclip_is_named_unsupported() -> None:
    unet = ldm_unet_shapes(**{**UNETS["sd2"], "adm": 1536})
    with pytest.raises(UnsupportedModelError, match="unCLIP"):
        detect_state_dict(LazyStateDict.from_tensors(meta_dict(_prefixed("model.diffusion_model.", unet))))


def test_pix2pix_style_input_channels_are_refused() -> None:
    tensors = real_checkpoint("sd15", in_ch=8)
    with pytest.raises(UnsupportedModelError, match="8 input channels"):
        detect_state_dict(LazyStateDict.from_tensors(tensors))


def test_unknown_tensors_report_what_was_found() -> None:
    tensors = {"foo.weight": torch.empty(2, device="meta"), "bar.bias": torch.empty(2, device="meta")}
    with pytest.raises(UnknownModelError, match="2 tensors with top-level key prefixes: bar, foo"):
        detect_state_dict(LazyStateDict.from_tensors(tensors))


def test_foreign_signatures_match_whole_key_parts_only() -> None:
    """`out_block.1.weight` contains PixArt's `t_block.1.weight` as a substring, not as a key part."""
    tensors = real_checkpoint("sd15", **{"model.diffusion_model.extra.out_block.1.weight": torch.zeros(1)})
    assert detect_state_dict(LazyStateDict.from_tensors(tensors)).family is ModelFamily.SD15
