"""Write a tiny Llama as a GGUF file with the ``gguf`` package (the layout llama.cpp's converter writes: Q/K rows
permuted, a GPT-2 byte-level BPE tokenizer of 260 tokens, a ChatML template), so the GGUF loading path of the LLM
layer is tested in seconds without the 93 MB SmolLM2 file."""

from __future__ import annotations

import gguf
import torch
from transformers import LlamaConfig, LlamaForCausalLM

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def permute(weight, heads: int):
    """llama.cpp's row order of the Q/K projections (transformers undoes it when loading)."""
    grouped = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return grouped.swapaxes(1, 2).reshape(weight.shape)


def write(path, hidden: int = 16, layers: int = 1, heads: int = 2, seed: int = 0) -> LlamaForCausalLM:
    """Write the GGUF file and return the reference model whose weights it holds."""
    tokens = bytes_to_unicode() + ["th", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(2 * hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 257 + [3, 3, 3])
    writer.add_token_merges(["t h"])
    writer.add_bos_token_id(258)
    writer.add_eos_token_id(259)
    writer.add_pad_token_id(259)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    names = {
        "attn_norm": "input_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(layers):
        prefix = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_q.weight", permute(state[prefix + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", permute(state[prefix + "self_attn.k_proj.weight"], heads))
        for gguf_name, hf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", state[f"{prefix}{hf_name}.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
