"""OmniAvatar: Wan 2.1 T2V (1.3B / 14B) with a LoRA and audio conditioning, offline.

The second diffusion engine. Its parts live in small modules of this package (config, DiT,
LoRA loading, tiled VAE, audio features, schedule, guidance, TeaCache, the segment loop);
what it shares with FlashTalk (attention, RoPE, the Wan VAE, T5, wav2vec2) is imported
from ``pipeline``, never copied. Like the rest of ``pipeline``: torch only, synchronous.
"""
