"""Tiny random models and in-memory tokenizers, for tests, examples and benchmarks.

Nothing here touches the network: tokenizers are trained in memory on a built-in corpus and
models are randomly initialised from small configs of real architectures.
"""
from __future__ import annotations

import functools

__all__ = ["CORPUS", "make_tokenizer", "make_model", "ARCHITECTURES", "DECODER_ONLY",
           "ENCODER_DECODER"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Kim has a red ball and Sam has a blue cup.",
    "The capital of France is Paris and the capital of Italy is Rome.",
    "She said that the doctor was late because of the rain.",
    "He gave the nurse a book about birds, trees and rivers.",
    "A small model can still explain what it predicts.",
    "Hello world, this is a tiny test of attribution methods!",
    "Numbers like 1, 2, 3 and 42 appear in text <b>too</b> & more.",
    "Translation models map a source sentence to a target sentence.",
    "The cat sat on the mat while the dog slept near the door.",
]

ARCHITECTURES = ("gpt2", "gpt_neo", "gptj", "opt", "bloom", "xglm", "llama", "mistral", "gemma",
                 "bart", "mbart", "marian", "pegasus", "t5", "mt5")
DECODER_ONLY = ARCHITECTURES[:9]
ENCODER_DECODER = ARCHITECTURES[9:]


@functools.lru_cache(maxsize=None)
def make_tokenizer(style: str = "bytelevel", vocab_size: int = 320):
    """A fast tokenizer trained in memory.

    Styles:
      ``bytelevel``: GPT-2-like byte-level BPE (``Ġ``), ``<|endoftext|>`` as BOS/EOS/UNK, no
        special tokens added.
      ``bos``: sentencepiece-like BPE (``▁``) that prepends ``<s>`` (Llama/Gemma style).
      ``eos``: sentencepiece-like BPE that appends ``</s>`` (T5/Marian/Pegasus style), with
        ``<pad>`` and ``<unk>``.
      ``bart``: like ``eos`` but wraps as ``<s> … </s>`` (BART/mBART style).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "bytelevel":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                       show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator(CORPUS, trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>",
                                       eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                   show_progress=False)
    tk.train_from_iterator(CORPUS, trainer)
    ids = {t: tk.token_to_id(t) for t in specials}
    if style == "bos":
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", ids["<s>"])])
    elif style == "eos":
        tk.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", ids["</s>"])])
    elif style == "bart":
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])])
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>")


_TOKENIZER_STYLE = {"gpt2": "bytelevel", "gpt_neo": "bytelevel", "gptj": "bytelevel",
                    "opt": "bytelevel", "bloom": "bytelevel", "xglm": "bos", "llama": "bos",
                    "mistral": "bos", "gemma": "bos", "bart": "bart", "mbart": "bart",
                    "marian": "eos", "pegasus": "eos", "t5": "eos", "mt5": "eos"}


def _config(arch: str, tok, *, hidden: int, layers: int, heads: int, positions: int,
            init: float):
    import transformers as T
    V = len(tok)
    sp = dict(pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
              eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    ff = hidden * 2
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=V, n_embd=hidden, n_layer=layers, n_head=heads,
                            n_positions=positions, initializer_range=init, **sp)
    if arch == "gpt_neo":
        return T.GPTNeoConfig(vocab_size=V, hidden_size=hidden, num_layers=layers,
                              num_heads=heads, max_position_embeddings=positions,
                              attention_types=[[["global", "local"], max(layers // 2, 1)]],
                              window_size=4, initializer_range=init, **sp)
    if arch == "gptj":
        return T.GPTJConfig(vocab_size=V, n_embd=hidden, n_layer=layers, n_head=heads,
                            n_positions=positions, rotary_dim=hidden // heads // 2,
                            initializer_range=init, **sp)
    if arch == "opt":
        return T.OPTConfig(vocab_size=V, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, ffn_dim=ff, word_embed_proj_dim=hidden,
                           max_position_embeddings=positions, init_std=init, **sp)
    if arch == "bloom":
        return T.BloomConfig(vocab_size=V, hidden_size=hidden, n_layer=layers, n_head=heads,
                             initializer_range=init, **sp)
    if arch == "xglm":
        return T.XGLMConfig(vocab_size=V, d_model=hidden, num_layers=layers,
                            attention_heads=heads, ffn_dim=ff, max_position_embeddings=positions,
                            init_std=init, scale_embedding=True, decoder_start_token_id=tok.bos_token_id, **sp)
    if arch in ("llama", "mistral"):
        cls = T.LlamaConfig if arch == "llama" else T.MistralConfig
        return cls(vocab_size=V, hidden_size=hidden, num_hidden_layers=layers,
                   num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1),
                   intermediate_size=ff, max_position_embeddings=positions,
                   initializer_range=init, **sp)
    if arch == "gemma":
        return T.GemmaConfig(vocab_size=V, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=1,
                             head_dim=hidden // heads, intermediate_size=ff,
                             max_position_embeddings=positions, initializer_range=init,
                             hidden_activation="gelu_pytorch_tanh", **sp)
    seq2seq = dict(vocab_size=V, d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                   encoder_attention_heads=heads, decoder_attention_heads=heads,
                   encoder_ffn_dim=ff, decoder_ffn_dim=ff, max_position_embeddings=positions,
                   init_std=init, scale_embedding=True, **sp)
    if arch == "bart":
        return T.BartConfig(decoder_start_token_id=tok.eos_token_id, **seq2seq)
    if arch == "mbart":
        return T.MBartConfig(decoder_start_token_id=tok.eos_token_id, **seq2seq)
    if arch == "marian":
        return T.MarianConfig(decoder_start_token_id=tok.pad_token_id, **seq2seq)
    if arch == "pegasus":
        return T.PegasusConfig(decoder_start_token_id=tok.pad_token_id, **seq2seq)
    if arch in ("t5", "mt5"):
        cls = T.T5Config if arch == "t5" else T.MT5Config
        return cls(vocab_size=V, d_model=hidden, d_kv=hidden // heads, d_ff=ff,
                   num_layers=layers, num_heads=heads, initializer_factor=1.0,
                   decoder_start_token_id=tok.pad_token_id, **sp)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


_FLAX_CLASS = {"gpt2": "FlaxGPT2LMHeadModel", "gpt_neo": "FlaxGPTNeoForCausalLM",
               "gptj": "FlaxGPTJForCausalLM", "opt": "FlaxOPTForCausalLM",
               "bloom": "FlaxBloomForCausalLM", "xglm": "FlaxXGLMForCausalLM",
               "llama": "FlaxLlamaForCausalLM", "mistral": "FlaxMistralForCausalLM",
               "gemma": "FlaxGemmaForCausalLM", "bart": "FlaxBartForConditionalGeneration",
               "mbart": "FlaxMBartForConditionalGeneration", "marian": "FlaxMarianMTModel",
               "pegasus": "FlaxPegasusForConditionalGeneration",
               "t5": "FlaxT5ForConditionalGeneration", "mt5": "FlaxMT5ForConditionalGeneration"}


def make_model(arch: str = "gpt2", *, hidden: int = 32, layers: int = 2, heads: int = 4,
               positions: int = 64, init: float = 0.2, seed: int = 0):
    """``(flax_model, tokenizer)``: a randomly initialised tiny model of a real architecture.

    ``init`` is the initialiser scale: larger than the usual 0.02 so that predictions are far
    from uniform and gradients are informative.
    """
    import transformers as T
    from . import _compat
    tok = make_tokenizer(_TOKENIZER_STYLE[arch])
    cfg = _config(arch, tok, hidden=hidden, layers=layers, heads=heads, positions=positions,
                  init=init)
    _compat.apply(cfg.model_type)
    model = getattr(T, _FLAX_CLASS[arch])(cfg, seed=seed)
    return model, tok
