"""Tiny random-weight text classifiers of twelve Hugging Face model families (eight encoders, four
decoders), each saved with a fast tokenizer of that family trained offline at call time (nothing is
downloaded).

`build_family_model(directory, family, labels)` writes a directory that `AutoTokenizer`,
`AutoModelForSequenceClassification` and `pipeline("text-classification")` load like a hub checkpoint of
that family: 2 layers of width 32, 2 heads, feed-forward 64, and a tokenizer whose normalizer,
pre-tokenizer and post-processor (hence whose offsets) follow the real one:

- bert, distilbert, electra: lower-cased WordPiece (`##` continuations), offsets exclude spaces.
- roberta: byte-level BPE (`Ġ` marks a space) with `RobertaProcessing(trim_offsets=True)`: offsets exclude
  the space a `Ġ` token carries.
- xlm-roberta, albert: Unigram after `WhitespaceSplit` + `Metaspace`: spaces are gone before the model
  runs, so a `▁word` token's offsets start at the word.
- deberta-v2 (DeBERTa-v3): Unigram + `Metaspace` without a whitespace split: a `▁word` token's offsets
  start at the space before it, and stand-alone `▁` tokens occur.
- modernbert: byte-level BPE (OLMo style) with a plain `[CLS] $A [SEP]` template: offsets include the
  space before a word, and a run of spaces can give a stand-alone `Ġ` token.

And four decoder classifiers (their head reads each row's last token, found by the config's pad id,
which each has as these families' fine-tuned classifiers are deployed), each without a mask token:

- gpt2: byte-level BPE, `<|endoftext|>` the last id and bos, eos and pad (in the config only); no
  special token added to a text.
- llama (Llama 2): SentencePiece BPE with byte fallback, `▁` prepended to the text (Metaspace),
  `<unk>`=0 `<s>`=1 `</s>`=2; `<s>` starts every row; pad = `</s>`.
- qwen2: byte-level BPE after Qwen2's own split (digits one by one), `<|endoftext|>` pad and eos; no
  special token added to a text; grouped-query attention (one key-value head).
- gemma: SentencePiece BPE with byte fallback, spaces made `▁` without a prepended one,
  `<pad>`=0 `<eos>`=1 `<bos>`=2 `<unk>`=3 `<mask>`=4; `<bos>` starts every row; pad = `<pad>`;
  one key-value head of a width other than hidden / heads.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

ENCODER_FAMILIES: tuple[str, ...] = (
    "bert",
    "distilbert",
    "electra",
    "roberta",
    "xlm-roberta",
    "deberta-v2",
    "albert",
    "modernbert",
)
DECODER_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "qwen2", "gemma")
FAMILIES: tuple[str, ...] = ENCODER_FAMILIES + DECODER_FAMILIES

# Movie-review-like English plus the text that tokenizers disagree on: apostrophes, accents, emoji,
# CJK, digits and punctuation.
CORPUS: tuple[str, ...] = (
    "I loved this movie, the acting was superb and the story kept me hooked.",
    "This film was boring, slow and far too long.",
    "The plot made no sense, but the music was great.",
    "What a terrible waste of two hours!",
    "An absolute masterpiece: beautifully shot, cleverly written, wonderfully acted.",
    "I don't think it's the director's best. But it is still worth watching.",
    "It's not bad, it's just not very good either.",
    "The cast doesn't save a script that can't decide what it wants to be.",
    "We didn't expect much, and we weren't disappointed.",
    "She's brilliant in the lead role; he's wooden and dull.",
    "Don't waste your money on this one.",
    "The director's cut is 20 minutes longer and 100% better.",
    "Rated 4/5 stars: funny, warm and surprisingly moving.",
    "I'd give it 2 out of 10, and that's generous.",
    "The sequel (2019) is worse than the original (1999).",
    "Great special effects... shame about the dialogue.",
    "Why did they cast him? He can't act!",
    "A naïve but charming story about a café owner in Paris.",
    "Her résumé includes three award-winning films and a Broadway play.",
    "The soundtrack, composed by Zoë, is the best thing about it.",
    "Déjà vu: we've seen this plot a hundred times before.",
    "Such a fun night at the movies 🎬 loved every minute 😀",
    "Popcorn 🍿 and a good film, what more could you want? 😀",
    "我喜欢这部电影",
    "这部电影很无聊",
    "日本語のテキストも少しあります。",
    "The ending was predictable, yet I couldn't look away.",
    "Honestly, the worst movie I've seen this year.",
    "It was okay. Not great, not awful, just okay.",
    "The characters felt real and the dialogue was sharp.",
    "Too many clichés, too little humor, and a plot that goes nowhere.",
    "One of the best films of the decade; I'd watch it again tomorrow.",
    "The first half is slow, but then it really picks up.",
    "Kids will love it, adults might find it a bit silly.",
    "I hated the ending, but I loved everything else about it.",
    "Beautiful cinematography, weak story, forgettable characters.",
    "A must-see for fans of the genre, but others may be bored.",
    "It isn't perfect, but it's honest, funny and full of heart.",
    "They've made a sequel nobody asked for, and it shows.",
    "My 3 kids (ages 6, 9 and 12) laughed the whole time.",
    "Tickets cost $12.50 each; the film was worth every cent.",
    "E-mail me at fan@example.com if you've seen it too.",
    "Who knew a movie about trains could be so thrilling?",
    "The villain's motives were never explained; I'm still confused.",
    "Twenty minutes in, I already wanted to leave.",
    "The lead actress gives the performance of her career.",
)

_ASCII = string.ascii_letters + string.digits + string.punctuation
_SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
# The hub base models' shapes (bench/families.py times these): roberta-base, xlm-roberta-base,
# deberta-v3-base, bert-base, electra-base and albert-base share the BERT-base encoder's shape.
_BASE_SIZES = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
_MODERNBERT_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 22,
    "num_attention_heads": 12,
    "intermediate_size": 1152,
}
# A corpus and vocabulary size given to build_family_model (the benchmarks train on SST-2), else None.
_TRAINING: ContextVar[tuple[Sequence[str], int] | None] = ContextVar("training", default=None)


def _corpus() -> list[str]:
    given = _TRAINING.get()
    # a few repetitions so the common words become whole tokens
    return list(given[0]) if given else list(CORPUS) * 3


def _vocab_size(default: int) -> int:
    given = _TRAINING.get()
    return given[1] if given else default


# ------------------------------------------------------------------------------------ tokenizers


def _train(tokenizer: Any, trainer: Any) -> dict[str, Any]:
    """Train `tokenizer` on the corpus and return its serialized model section."""
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return json.loads(tokenizer.to_str())["model"]


def _wordpiece_vocab(specials: list[str]) -> dict[str, int]:
    """A lower-cased WordPiece vocabulary learnt from the corpus: `specials`, then every unit of a BPE
    trained on BERT-normalized words, each both word-initial and as a `##` continuation.

    (The tokenizers WordPieceTrainer breaks ties in hash order, so its vocabulary changes from run to
    run; a plain BPE trainer given its alphabet is deterministic.)"""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    seen = {char for text in _corpus() for char in normalizer.normalize_str(text) if not char.isspace()}
    alphabet = sorted(seen | set(_ASCII.lower()))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(vocab_size=_vocab_size(800), initial_alphabet=alphabet, show_progress=False)
    units = sorted(_train(tokenizer, trainer)["vocab"].items(), key=lambda item: item[1])
    tokens = specials + [unit for unit, _ in units] + ["##" + unit for unit, _ in units]
    return {token: i for i, token in enumerate(tokens)}


def _byte_level_bpe(specials: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(tokens in id order, merges) of a byte-level BPE trained on the corpus; `specials` come first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_vocab_size(900),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    model = _train(tokenizer, trainer)
    vocab = model["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return sorted(vocab, key=vocab.__getitem__), merges


def _sentencepiece_bpe(specials: list[str], prepend: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocabulary, merges) of a SentencePiece-style BPE with byte fallback (Llama, Gemma) trained on the
    corpus: `specials`, the 256 byte pieces `<0x00>`..`<0xFF>` that an unknown character falls back to,
    then the learnt pieces. `prepend`: Metaspace's scheme, "first" (Llama's `▁` before the text) or
    "never" (Gemma's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # Training splits at every `▁`, and punctuation and single digits off (SentencePiece's script and
    # digit splits), so that no piece spans two words: at inference the family's own pre-tokenizer,
    # which splits nothing, picks from these pieces.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.BpeTrainer(vocab_size=_vocab_size(800), show_progress=False)
    model = _train(tokenizer, trainer)
    learnt = sorted(model["vocab"], key=model["vocab"].__getitem__)
    pieces = [*specials, *(f"<0x{byte:02X}>" for byte in range(256)), *learnt]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return {piece: i for i, piece in enumerate(pieces)}, merges


def _unigram_pieces(lowercase: bool, unk: str) -> list[tuple[str, float]]:
    """(piece, log-probability) pairs of a SentencePiece-style Unigram trained on the corpus, most
    likely first, without specials. `lowercase`: ALBERT's normalization (no accents, lower case)."""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = (
        normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
        if lowercase
        else normalizers.NFC()
    )
    # Training splits punctuation and digit runs off, as SentencePiece does, so that no piece spans "n't"
    # or "s2": at inference the family's own pre-tokenizer (no such split) picks from these pieces.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=False),
        ]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=_vocab_size(800),
        special_tokens=[unk],
        unk_token=unk,
        show_progress=False,
        max_piece_length=12,
    )
    scores = {piece: float(score) for piece, score in _train(tokenizer, trainer)["vocab"] if piece != unk}
    # The trainer appends the characters its EM dropped at the lowest score minus 1e-4 per character, in
    # hash order: give that tail one score so that the same corpus always gives the same file.
    floor = min(scores.values())
    scores = {piece: floor if score < floor + 0.05 else score for piece, score in scores.items()}
    # every ASCII letter, digit and punctuation mark is a piece, as in any real vocabulary
    for char in _ASCII.lower() if lowercase else _ASCII:
        scores.setdefault(char, floor)
    # On a corpus this small the trainer's EM keeps few whole words ("▁it" = "▁" + "it"); a real
    # SentencePiece vocabulary has every common word, so add each Latin-script corpus word at its own
    # frequency (emoji and CJK keep the trained pieces).
    words = Counter(
        word
        for text in _corpus()
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))
    )
    total = sum(words.values())
    for word, count in words.items():
        if all(char.isalpha() and ord(char) < 0x250 for char in word.lstrip("▁")):
            scores.setdefault(word, math.log(count / total))
    # EM sums in parallel: round away the last bits so that the same corpus gives the same file
    return sorted(
        ((piece, round(score, 6)) for piece, score in scores.items()), key=lambda item: (-item[1], item[0])
    )


def _bert_tokenizer(family: str, max_length: int) -> Any:
    from transformers import BertTokenizer, DistilBertTokenizer

    vocab = _wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    cls = DistilBertTokenizer if family == "distilbert" else BertTokenizer
    return cls(vocab=vocab, do_lower_case=True, model_max_length=max_length)


def _roberta_tokenizer(family: str, max_length: int) -> Any:
    from tokenizers import AddedToken
    from transformers import RobertaTokenizer

    # roberta-base: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>=last
    tokens, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>"])
    vocab = {token: i for i, token in enumerate(tokens)}
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(
        vocab=vocab,
        merges=merges,
        add_prefix_space=False,
        trim_offsets=True,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=max_length,
    )


def _xlm_roberta_tokenizer(family: str, max_length: int) -> Any:
    from tokenizers import AddedToken
    from transformers import XLMRobertaTokenizer

    # xlm-roberta-base: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>=last (the class hard-codes unk_id=3)
    pieces = _unigram_pieces(lowercase=False, unk="<unk>")
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces, ("<mask>", 0.0)]
    return XLMRobertaTokenizer(
        vocab=vocab,
        add_prefix_space=True,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=max_length,
    )


def _deberta_v2_tokenizer(family: str, max_length: int) -> Any:
    from transformers import DebertaV2Tokenizer

    # deberta-v3-base: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 ... [MASK]=last
    pieces = _unigram_pieces(lowercase=False, unk="[UNK]")
    vocab = [("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0), *pieces, ("[MASK]", 0.0)]
    return DebertaV2Tokenizer(
        vocab=vocab, do_lower_case=False, split_by_punct=False, unk_id=3, model_max_length=max_length
    )


def _albert_tokenizer(family: str, max_length: int) -> Any:
    from tokenizers import AddedToken
    from transformers import AlbertTokenizer

    # albert-base-v2: <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4 (the class hard-codes unk_id=1)
    pieces = _unigram_pieces(lowercase=True, unk="<unk>")
    vocab = [("<pad>", 0.0), ("<unk>", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0), *pieces]
    return AlbertTokenizer(
        vocab=vocab,
        do_lower_case=True,
        keep_accents=False,
        mask_token=AddedToken("[MASK]", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=max_length,
    )


def _modernbert_tokenizer(family: str, max_length: int) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # ModernBERT-base: an OLMo byte-level BPE, its specials at the end ([UNK] [CLS] [SEP] [PAD] [MASK]),
    # a plain template post-processor (no offset trimming).
    tokens, merges = _byte_level_bpe(["<|endoftext|>", "<|padding|>"])
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(tokens + specials)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=False, trim_offsets=True, use_regex=True
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [
            AddedToken(token, lstrip=token == "[MASK]", rstrip=False, normalized=False, special=True)
            for token in ["<|endoftext|>", "<|padding|>", *specials]
        ]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=max_length,
    )


_GPT2_EOS = "<|endoftext|>"


def _gpt2_tokenizer(family: str, max_length: int, pad: bool = False) -> Any:
    from transformers import GPT2Tokenizer

    # gpt2: `<|endoftext|>` is the last id, and bos, eos and unk; no pad token (`pad`: the eos)
    tokens, merges = _byte_level_bpe([])
    vocab = {token: i for i, token in enumerate(tokens)}
    vocab[_GPT2_EOS] = len(vocab)
    return GPT2Tokenizer(
        vocab=vocab, merges=merges, pad_token=_GPT2_EOS if pad else None, model_max_length=max_length
    )


def _llama_tokenizer(family: str, max_length: int) -> Any:
    from transformers import LlamaTokenizer

    # Llama 2: <unk>=0 <s>=1 </s>=2, byte pieces, then the learnt ones; `<s>` starts every text. Its
    # classifiers are fine-tuned with pad = eos.
    vocab, merges = _sentencepiece_bpe(["<unk>", "<s>", "</s>"], prepend="first")
    return LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,
        add_eos_token=False,
        pad_token="</s>",
        model_max_length=max_length,
    )


def _qwen2_tokenizer(family: str, max_length: int) -> Any:
    from transformers import Qwen2Tokenizer

    # Qwen2: byte-level BPE, `<|endoftext|>` after it (eos, unk and pad); nothing added to a text
    tokens, merges = _byte_level_bpe([])
    vocab = {token: i for i, token in enumerate([*tokens, "<|endoftext|>"])}
    return Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _gemma_tokenizer(family: str, max_length: int) -> Any:
    from transformers import GemmaTokenizer

    # Gemma: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4, byte pieces, then the learnt ones; `<bos>` starts
    # every text
    vocab, merges = _sentencepiece_bpe(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], prepend="never")
    return GemmaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, model_max_length=max_length
    )


_TOKENIZERS = {
    "bert": _bert_tokenizer,
    "distilbert": _bert_tokenizer,
    "electra": _bert_tokenizer,
    "roberta": _roberta_tokenizer,
    "xlm-roberta": _xlm_roberta_tokenizer,
    "deberta-v2": _deberta_v2_tokenizer,
    "albert": _albert_tokenizer,
    "modernbert": _modernbert_tokenizer,
    "gpt2": _gpt2_tokenizer,
    "llama": _llama_tokenizer,
    "qwen2": _qwen2_tokenizer,
    "gemma": _gemma_tokenizer,
}

# ------------------------------------------------------------------------------------ models


def _model(
    family: str, tokenizer: Any, heads: dict[str, Any], positions: int, pooling: str | None, base: bool
) -> Any:
    import transformers as tf

    if family in DECODER_FAMILIES:
        return _decoder_model(family, tokenizer, heads, positions)
    sizes = _BASE_SIZES if base else _SIZES

    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": positions,
    }
    if family == "bert":
        return tf.BertForSequenceClassification(tf.BertConfig(**sizes, **ids, **heads))
    if family == "distilbert":
        names = ("dim", "n_layers", "n_heads", "hidden_dim")
        own = dict(zip(names, sizes.values(), strict=True))  # the same shape under DistilBERT's names
        return tf.DistilBertForSequenceClassification(tf.DistilBertConfig(**own, **ids, **heads))
    if family == "electra":
        config = tf.ElectraConfig(embedding_size=sizes["hidden_size"], **sizes, **ids, **heads)
        return tf.ElectraForSequenceClassification(config)
    if family in ("roberta", "xlm-roberta"):
        bos_eos = {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}
        # positions start after the padding index: roberta-base has 514 = 512 + 2
        config_class, model_class = (
            (tf.RobertaConfig, tf.RobertaForSequenceClassification)
            if family == "roberta"
            else (tf.XLMRobertaConfig, tf.XLMRobertaForSequenceClassification)
        )
        config = config_class(**sizes, **ids, **bos_eos, type_vocab_size=1, **heads)
        return model_class(config)
    if family == "deberta-v2":
        # as microsoft/deberta-v3-base: relative attention, no absolute positions in the input
        config = tf.DebertaV2Config(
            **sizes,
            **ids,
            **heads,
            relative_attention=True,
            position_buckets=256,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            max_relative_positions=-1,
            type_vocab_size=0,
            layer_norm_eps=1e-7,
        )
        return tf.DebertaV2ForSequenceClassification(config)
    if family == "albert":
        bos_eos = {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}
        config = tf.AlbertConfig(embedding_size=128 if base else 16, **sizes, **ids, **bos_eos, **heads)
        return tf.AlbertForSequenceClassification(config)
    if family == "modernbert":
        special = {
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
        }
        extra = {} if pooling is None else {"classifier_pooling": pooling}
        config = tf.ModernBertConfig(
            **(_MODERNBERT_BASE if base else sizes), **ids, **special, **heads, **extra
        )
        return tf.ModernBertForSequenceClassification(config)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _decoder_model(family: str, tokenizer: Any, heads: dict[str, Any], positions: int) -> Any:
    """A decoder classifier with its pad id in the config: the tokenizer's, or (GPT-2's tokenizer has
    none) its eos, as fine-tuned GPT-2 classifiers have it."""
    import transformers as tf

    eos = tokenizer.eos_token_id
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
        "eos_token_id": eos,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    }
    if family == "gpt2":
        names = ("n_embd", "n_layer", "n_head", "n_inner")
        own = dict(zip(names, _SIZES.values(), strict=True))  # the same shape under GPT-2's names
        config = tf.GPT2Config(**own, n_positions=positions, **ids, **heads)
        return tf.GPT2ForSequenceClassification(config)
    shape = {**_SIZES, "max_position_embeddings": positions, **ids, **heads}
    if family == "llama":  # Llama 2's multi-head attention
        return tf.LlamaForSequenceClassification(tf.LlamaConfig(**shape, num_key_value_heads=2))
    if family == "qwen2":  # grouped-query attention, biased query/key/value projections
        return tf.Qwen2ForSequenceClassification(tf.Qwen2Config(**shape, num_key_value_heads=1))
    if family == "gemma":  # multi-query attention, heads wider than hidden / heads (as gemma-7b's)
        config = tf.GemmaConfig(**shape, num_key_value_heads=1, head_dim=24)
        return tf.GemmaForSequenceClassification(config)
    raise ValueError(f"unknown decoder family {family!r}")


def build_family_model(
    directory: Path,
    family: str,
    labels: list[str] | None = None,
    *,
    num_labels: int | None = None,
    problem_type: str | None = "single_label_classification",
    seed: int = 0,
    id2label: bool = True,
    classifier_pooling: str | None = None,
    max_length: int = 128,
    size: str = "tiny",
    corpus: Sequence[str] | None = None,
    vocab_size: int = 8000,
) -> Path:
    """Save into `directory` a random-weight `family` sequence classifier and its trained fast tokenizer.

    `labels` names the classes (config id2label/label2id); without them give `num_labels`, and the
    config keeps transformers' default LABEL_0.. names, as it does with `id2label=False`.
    `problem_type=None` omits it from the config.
    `classifier_pooling` ("cls" or "mean") applies to modernbert only. Weights follow `seed`.
    `size="base"`: the hub base model's shape (for benchmarks). `corpus`: train the tokenizer on these
    texts, to `vocab_size` tokens, instead of the built-in corpus."""
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if labels is None and num_labels is None:
        raise ValueError("give labels or num_labels")
    if labels is not None and num_labels is not None and num_labels != len(labels):
        raise ValueError(f"num_labels={num_labels} but {len(labels)} labels")
    if classifier_pooling is not None and family != "modernbert":
        raise ValueError("classifier_pooling applies to modernbert only")
    count = len(labels) if labels is not None else int(num_labels)  # type: ignore[arg-type]
    heads: dict[str, Any] = {"num_labels": count}
    if id2label and labels is not None:
        heads["id2label"] = dict(enumerate(labels))
        heads["label2id"] = {name: i for i, name in enumerate(labels)}
    if problem_type is not None:
        heads["problem_type"] = problem_type

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if size not in ("tiny", "base"):
        raise ValueError(f"size must be tiny or base, not {size!r}")
    if size == "base" and family in DECODER_FAMILIES:
        raise ValueError("size base applies to encoder families only")
    training = _TRAINING.set(None if corpus is None else (list(corpus), vocab_size))
    try:
        tokenizer = _TOKENIZERS[family](family, max_length)
    finally:
        _TRAINING.reset(training)
    torch.manual_seed(seed)
    model = _model(family, tokenizer, heads, max_length + 8, classifier_pooling, size == "base").eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if family == "modernbert":
        # as answerdotai/ModernBERT-base's tokenizer_config.json (transformers 5 loads TokenizersBackend)
        config_path = directory / "tokenizer_config.json"
        tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(
            json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return directory


def build_gpt2_model(
    directory: Path,
    labels: list[str],
    *,
    config_pad: bool,
    tokenizer_pad: bool,
    seed: int = 0,
    initializer_range: float = 0.5,
) -> Path:
    """Save a random-weight 2-layer GPT-2 classifier (a decoder head: it classifies each row's last
    token, found by `config.pad_token_id`) and a GPT-2 byte-level BPE tokenizer, with its pad id
    wherever a test wants it (FAMILIES' gpt2 has it in its config only).

    As in gpt2 on the hub, `<|endoftext|>` is the last id (not 0) and is bos, eos and unk. Its pad id
    is `<|endoftext|>` too, where it is set at all: in the config (`config_pad`, as fine-tuned GPT-2
    classifiers have it), in the tokenizer (`tokenizer_pad`), both or neither. `initializer_range`:
    tests/support.py's wide default, so that logits span several units and texts differ."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = _gpt2_tokenizer("gpt2", 128, pad=tokenizer_pad)
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=136,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=64,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos if config_pad else None,
        initializer_range=initializer_range,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="single_label_classification",
    )
    GPT2ForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def token_pieces(tokenizer: Any, text: str) -> list[tuple[str, tuple[int, int]]]:
    """Each token of `text` as its tokenizer names it, with its character offsets."""
    encoding = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    return [
        (token, (int(start), int(end)))
        for token, (start, end) in zip(tokens, encoding["offset_mapping"], strict=True)
    ]
