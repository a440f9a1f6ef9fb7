"""The embedded default: tiny random-weight diffusers pipelines built in code, for every task.

No download, a few seconds to build on a CPU, and a real diffusers code path end to end (schedulers,
UNet/transformer, VAE decode, callbacks), so the whole worker (streaming, encoding, cancellation) runs
anywhere. The outputs are noise-like videos and images; that is the point of random weights.

Sizes are chosen to stay fast on CPU while keeping the real checkpoints' shape rules: the VAEs have the
real scale factor (8 for SVD/SD, 4 for this LTX), and the CLIP vision encoder takes 224x224 inputs because
the SVD pipeline resizes images to 224 before encoding them. Tokenizers are built offline from an in-code
vocabulary (a byte-level CLIP BPE with no merges; a character-level T5 unigram).
"""

from __future__ import annotations

from typing import Any

from worker.model import Models
from worker.pipelines.diffusion import Defaults, device
from worker.pipelines.ltx import LTXModel
from worker.pipelines.sdxl import TextToImageModel
from worker.pipelines.svd import SVDModel

SVD_DEFAULTS = Defaults(width=64, height=64, steps=2, guidance=3.0, frames=8, fps=8.0)
SD_DEFAULTS = Defaults(width=64, height=64, steps=2, guidance=5.0)
LTX_DEFAULTS = Defaults(
    width=32, height=32, steps=2, guidance=3.0, frames=9, fps=8.0, multiple=4, frames_rule="8k+1"
)


def _diffusers() -> Any:
    """diffusers, typed as Any: its constructors are untyped, which `mypy --strict` rejects call by call."""
    import diffusers

    return diffusers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_tokenizer() -> Any:
    """A CLIPTokenizer without files: every byte is a token, `</w>` marks word ends, no merges.

    transformers 5 builds a working tokenizer from `vocab=dict, merges=[]`; `vocab_file=` would silently
    build a broken one.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> Any:
    """A T5Tokenizer without files: a character-level unigram vocabulary."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(chr(c), -3.0) for c in range(32, 127)] + [("▁" + chr(c), -2.5) for c in range(97, 123)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=128)


def _clip_text_config(tokenizer: Any, **extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        vocab_size=len(tokenizer), max_position_embeddings=77, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, **extra,
    )  # fmt: skip


def svd_pipeline(seed: int = 0) -> Any:
    import torch

    d = _diffusers()
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = d.UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
        up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
        cross_attention_dim=32, num_attention_heads=(2, 4), projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    )  # fmt: skip
    vae = d.AutoencoderKLTemporalDecoder(
        block_out_channels=[32] * 4,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        latent_channels=4,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32,
    )  # fmt: skip
    encoder = CLIPVisionModelWithProjection(vision)
    scheduler = d.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
    )  # fmt: skip
    return d.StableVideoDiffusionPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )  # fmt: skip


def _unet2d(**extra: Any) -> Any:
    d = _diffusers()

    return d.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), **extra,
    )  # fmt: skip


def _vae2d() -> Any:
    d = _diffusers()

    return d.AutoencoderKL(
        block_out_channels=[32] * 4, in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    )  # fmt: skip


def _ddim() -> Any:
    d = _diffusers()

    return d.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip


def sd_pipeline(seed: int = 0) -> Any:
    import torch

    d = _diffusers()
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    return d.StableDiffusionPipeline(
        vae=_vae2d(), text_encoder=CLIPTextModel(_clip_text_config(tokenizer)), tokenizer=tokenizer,
        unet=_unet2d(cross_attention_dim=32), scheduler=_ddim(), safety_checker=None, feature_extractor=None,
        image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip


def sdxl_pipeline(seed: int = 0) -> Any:
    import torch

    d = _diffusers()
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    config = _clip_text_config(tokenizer, projection_dim=32, hidden_act="gelu")
    unet = _unet2d(
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80, cross_attention_dim=64,
    )  # fmt: skip
    return d.StableDiffusionXLPipeline(
        vae=_vae2d(), text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer, tokenizer_2=clip_tokenizer(), unet=unet, scheduler=_ddim(),
    )  # fmt: skip


def ltx_pipeline(seed: int = 0) -> Any:
    import torch

    d = _diffusers()
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    transformer = d.LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    )  # fmt: skip
    vae = d.AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )  # fmt: skip
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return d.LTXPipeline(
        transformer=transformer, vae=vae, text_encoder=encoder, tokenizer=tokenizer,
        scheduler=d.FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip


class TinyLTXModel(LTXModel):
    max_sequence_length = 32


def load(source: str = "") -> Models:
    """The tiny models for all three tasks (`source` is unused: nothing is loaded)."""
    on = device()
    return Models(
        SVDModel(svd_pipeline(), on=on, defaults=SVD_DEFAULTS),
        TextToImageModel(sd_pipeline(), on=on, defaults=SD_DEFAULTS),
        TinyLTXModel(ltx_pipeline(), on=on, defaults=LTX_DEFAULTS),
    )
