"""A T5 encoder-decoder built from a model config's shape fields: TIGER's and P5's (and any seq2seq method's)
from-scratch backbone."""

from __future__ import annotations

OPTIONAL = ("relative_attention_num_buckets", "relative_attention_max_distance")


def t5_from_fields(m, vocab_size: int, pad: int, eos: int, **extra):
    """``T5ForConditionalGeneration`` of ``m.d_model``, ``d_kv``, ``d_ff``, ``num_heads``, ``num_encoder_layers``,
    ``num_decoder_layers``, ``dropout`` and ``feed_forward_proj`` (and the relative-attention fields where ``m``
    has them), decoding from ``pad`` without a KV cache; ``extra`` goes to ``T5Config`` as is."""
    from transformers import T5Config, T5ForConditionalGeneration

    fields = {key: getattr(m, key) for key in OPTIONAL if getattr(m, key, None) is not None}
    config = T5Config(
        vocab_size=vocab_size,
        d_model=m.d_model,
        d_kv=m.d_kv,
        d_ff=m.d_ff,
        num_layers=m.num_encoder_layers,
        num_decoder_layers=m.num_decoder_layers,
        num_heads=m.num_heads,
        dropout_rate=m.dropout,
        feed_forward_proj=m.feed_forward_proj,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=pad,
        use_cache=False,
        **fields,
        **extra,
    )
    return T5ForConditionalGeneration(config)
