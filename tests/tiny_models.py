"""Tiny Hugging Face checkpoints with the paper's real architectures, built and saved locally.

A Qwen2 causal LM (the architecture of Qwen-1.5) with a byte-level BPE tokenizer trained on the data's
own text and Qwen's ChatML chat template, and a CLIP vision model with its image processor, each written
with `save_pretrained`. Pointing `configs/paper.yaml`'s sources at these folders runs the paper's
structure end to end offline: `from_pretrained`, the chat template, the image processor, the feature
layer, all as on a cluster, in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

# Qwen-1.5-Chat's template (ChatML with the default system turn).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def save_tokenizer(folder: str | Path, texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer (as Qwen's) trained on `texts`, with the ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_tiny_qwen2(
    folder: str | Path,
    texts: list[str],
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """A randomly initialised Qwen2ForCausalLM (untied head, as Qwen-1.5) plus its tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = save_tokenizer(folder, texts)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return Path(folder)


def save_tiny_clip(
    folder: str | Path,
    image_size: int = 24,
    patch_size: int = 4,
    hidden_size: int = 32,
    num_layers: int = 3,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """A randomly initialised CLIPVisionModel and a CLIP image processor for its input size."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
    )
    torch.manual_seed(seed)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return Path(folder)
