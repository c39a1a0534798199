"""Tokenizers the project builds itself: the zoo's word-level tokenizer.

The word-level tokenizer splits on whitespace, isolates every punctuation mark,
and cuts digit runs into chunks of at most two digits ("1732" -> "17", "32"),
so years and numbers below 100 are single tokens. It is saved as an ordinary
``tokenizer.json`` that plain ``transformers`` loads.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterable
from typing import Any

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "unk": "<unk>"}


def word_level_tokenizer(words: Iterable[str], extra_tokens: Iterable[str] = ()):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is the specials + ``words``.

    Ids: 0 <pad>, 1 <bos> (also eos), 2 <unk>, then extra tokens, then sorted words.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS["pad"], SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["unk"]]
    vocab: dict[str, int] = {}
    for w in [*specials, *extra_tokens, *sorted(set(words))]:
        if w not in vocab:
            vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Split(Regex(r"\d{1,2}"), behavior="isolated"),
    ])
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins with spaces
    # words the pre-tokenizer would cut apart (e.g. "<think>") are matched whole
    whole = [w for w in vocab if w not in specials and len(tk.pre_tokenizer.pre_tokenize_str(w)) > 1]
    if whole:
        tk.add_tokens([AddedToken(w, single_word=False, normalized=False) for w in whole])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["bos"],
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
    )


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (size, fingerprint)


def fingerprint(tokenizer: Any) -> str:
    """A short hash of what ``tokenizer`` maps text to: its vocabulary and special-token ids.

    Two tokenizers with the same fingerprint give the same ids; PromptSets record the
    fingerprint of the tokenizer that built them, so engines can refuse prompts made
    for another model.
    """
    size = len(tokenizer)
    cached = _FINGERPRINTS.get(tokenizer)
    if cached is not None and cached[0] == size:
        return cached[1]
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    specials = [getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "unk")]
    digest = hashlib.sha256(json.dumps([vocab, specials]).encode()).hexdigest()[:16]
    _FINGERPRINTS[tokenizer] = (size, digest)
    return digest
