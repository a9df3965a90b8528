"""Build deterministic tiny random checkpoints (+ locally trained tokenizers).

Run in the SIDE env (torch + transformers + tokenizers + sentencepiece):

    /work/inseq-venv/bin/python benchmarks/inseq_side/make_tiny_checkpoints.py OUT_DIR

Creates:
  OUT_DIR/gpt2    GPT2LMHeadModel (2 layers, 32 dims, 4 heads, 64 positions) with a
                  byte-level BPE tokenizer (GPT2TokenizerFast) trained on CORPUS.
  OUT_DIR/marian  MarianMTModel (d_model 32, 2+2 layers, 4 heads, ffn 64, 64 positions)
                  with a MarianTokenizer built from two sentencepiece models trained
                  on CORPUS (English source) and its pig-latin translation (target).

Nothing is downloaded. Weights are saved as PyTorch `model.safetensors`.
The init std is 0.2 (instead of 0.02) so that output distributions are far from
uniform and attributions are non-trivial.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch

SEED = 1234

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a tiny test corpus.",
    "The cat sat on the mat and looked at the dog.",
    "A small model can still learn a few simple words.",
    "She sells sea shells by the sea shore.",
    "The weather is nice today and the sun is shining.",
    "I like to read books about history and science.",
    "My friend has a red car and a blue bike.",
    "We went to the market to buy some apples and bread.",
    "The children are playing in the garden after school.",
    "He opened the door and walked into the room.",
    "Water boils at one hundred degrees.",
    "The train leaves the station at seven in the morning.",
    "Please close the window because it is cold.",
    "They have lived in this town for many years.",
    "The teacher asked a question and the student answered.",
    "Birds fly south when the winter comes.",
    "This house is old but it is very comfortable.",
    "Can you tell me where the library is?",
    "The music was loud and the people were dancing.",
    "Attribution methods explain the predictions of a model.",
    "Gradients tell us how the output changes with the input.",
    "Integrated gradients sum gradients along a straight path.",
    "The translation of this sentence is not very good.",
    "Every morning I drink a cup of coffee with milk.",
    "The river flows through the valley to the sea.",
    "It was a dark and stormy night.",
    "Once upon a time there was a little girl.",
    "The dog is happy because it has a new ball.",
    "Our team won the game on Sunday.",
]


def pig_latin_word(w: str) -> str:
    """Toy 'target language': pig latin, punctuation kept at the end."""
    core = w.rstrip(".,?!")
    punct = w[len(core):]
    if not core:
        return w
    vowels = "aeiouAEIOU"
    if core[0] in vowels:
        out = core + "way"
    else:
        i = 0
        while i < len(core) and core[i] not in vowels:
            i += 1
        out = core[i:] + core[:i] + "ay"
    return out.lower() + punct


def pig_latin(s: str) -> str:
    return " ".join(pig_latin_word(w) for w in s.split())


TARGET_CORPUS = [pig_latin(s) for s in CORPUS]


def build_gpt2(out_dir: str) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        CORPUS * 4,
        vocab_size=400,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    with tempfile.TemporaryDirectory() as td:
        bpe.save_model(td)
        tok = GPT2TokenizerFast(
            vocab_file=os.path.join(td, "vocab.json"),
            merges_file=os.path.join(td, "merges.txt"),
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            add_prefix_space=False,
        )
    tok.model_max_length = 64
    eos_id = tok.convert_tokens_to_ids("<|endoftext|>")

    torch.manual_seed(SEED)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=None,
        initializer_range=0.2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    print(f"[gpt2] vocab={len(tok)} params={sum(p.numel() for p in model.parameters())} -> {out_dir}")


def _train_spm(lines: list[str], out_path: str, vocab_size: int) -> None:
    import io

    import sentencepiece as spm

    # sentence_iterator + model_writer (no input path / model_prefix) so that no
    # path is stored in the model proto: the .spm files are byte-reproducible.
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=1,
        pad_id=-1,
        unk_piece="<unk>",
        eos_piece="</s>",
        seed_sentencepiece_size=10000,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    with open(out_path, "wb") as f:
        f.write(buf.getvalue())


def build_marian(out_dir: str) -> None:
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    os.makedirs(out_dir, exist_ok=True)
    _train_spm(CORPUS, os.path.join(out_dir, "source.spm"), 200)
    _train_spm(TARGET_CORPUS, os.path.join(out_dir, "target.spm"), 200)

    # Shared vocab.json (Marian style): </s>=0, <unk>=1, pieces..., <pad>=last.
    vocab: dict[str, int] = {"</s>": 0, "<unk>": 1}
    for name in ("source", "target"):
        sp = spm.SentencePieceProcessor(model_file=os.path.join(out_dir, f"{name}.spm"))
        for i in range(sp.get_piece_size()):
            p = sp.id_to_piece(i)
            if p not in vocab:
                vocab[p] = len(vocab)
    vocab["<pad>"] = len(vocab)
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=1)

    tok = MarianTokenizer(
        source_spm=os.path.join(out_dir, "source.spm"),
        target_spm=os.path.join(out_dir, "target.spm"),
        vocab=os.path.join(out_dir, "vocab.json"),
        source_lang="en",
        target_lang="pig",
        model_max_length=64,
    )
    pad_id = vocab["<pad>"]

    torch.manual_seed(SEED)
    cfg = MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        init_std=0.2,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        activation_function="swish",
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=0,
        forced_eos_token_id=0,
        decoder_start_token_id=pad_id,
        bos_token_id=None,
    )
    model = MarianMTModel(cfg).eval()
    model.generation_config.max_length = 64
    model.generation_config.num_beams = 1
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    print(f"[marian] vocab={len(vocab)} pad={pad_id} params={sum(p.numel() for p in model.parameters())} -> {out_dir}")


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} OUT_DIR")
    out = sys.argv[1]
    build_gpt2(os.path.join(out, "gpt2"))
    build_marian(os.path.join(out, "marian"))


if __name__ == "__main__":
    main()
