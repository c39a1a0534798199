"""Task machinery shared by every task: templates, tokenizer probing, assembly.

A template is natural text with ``{SLOT}`` fields, e.g.
``"Then, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to"``.
It is split into *pieces*: slots, words (``[^\\W_]+``) and single punctuation
marks. A piece is *attached* when no whitespace precedes it in the template
("," in "Then," or "{YY}" in "17{YY}"); otherwise one space precedes it.

Rendering the same pieces gives the same text for every tokenizer; the token
index of each slot is then read from the tokenizer's offset mapping, and a slot
that is not exactly one token is an error. So the same task runs unchanged on a
word-level tokenizer and on a BPE tokenizer.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits.prompts import PromptAlignmentError, PromptSet
from circuits.tokenization import fingerprint

_PIECE = re.compile(r"\{[A-Za-z0-9_]+\}|[^\W_]+|\S")
SPLITS = ("all", "train", "test")
HOLDOUT_MOD = 5  # 1 in 5 combinations is held out for the "test" split
MAX_PROMPTS = 1_000_000  # a PromptSet beyond this is a mistake (the zoo corpora need ~120k): build it in parts
PROGRESS_FROM = 5_000  # show a progress bar when building at least this many prompts


def check_n(n: Any) -> int:
    """``n`` as a number of prompts: a positive int up to MAX_PROMPTS."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer number of prompts, got {n!r}")
    if n > MAX_PROMPTS:
        raise ValueError(f"n={n} prompts is more than the {MAX_PROMPTS} one PromptSet may hold; build several "
                         "smaller sets (different seeds) instead")
    return n


def check_seed(seed: Any) -> int:
    """``seed`` as an int (every random choice in a task is drawn from it)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r} ({type(seed).__name__})")
    return seed


class TaskVocabularyError(ValueError):
    """Too few of a task's words are single tokens in the given tokenizer."""


@dataclass(frozen=True)
class Piece:
    """One piece of a parsed template: its text (a word, a punctuation mark or ``{SLOT}``),
    whether it follows the previous piece with no whitespace, its slot name (None for
    literal text) and whether a newline precedes it.
    """

    text: str
    attach: bool
    slot: str | None = None
    newline: bool = False  # a newline (not a space) precedes it


def parse_template(template: str) -> tuple[Piece, ...]:
    """Split a template string into pieces (slots, words, punctuation marks)."""
    pieces = []
    for m in _PIECE.finditer(template):
        tok = m.group(0)
        attach = m.start() > 0 and not template[m.start() - 1].isspace()
        newline = m.start() > 0 and template[m.start() - 1] == "\n"
        slot = tok[1:-1] if tok.startswith("{") and tok.endswith("}") else None
        pieces.append(Piece(tok, attach, slot, newline))
    return tuple(pieces)


def render(pieces: Sequence[Piece], fill: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Text of the filled template and the character span of every slot."""
    out: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    n = 0
    for i, p in enumerate(pieces):
        word = fill[p.slot] if p.slot is not None else p.text
        sep = "" if (i == 0 or p.attach) else ("\n" if p.newline else " ")
        start = n + len(sep)
        out.append(sep + word)
        n = start + len(word)
        if p.slot is not None:
            spans[p.slot] = (start, n)
    return "".join(out), spans


def in_split(key: Iterable[Any], split: str) -> bool:
    """Deterministic held-out assignment of a combination ``key``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return True
    held_out = zlib.crc32("|".join(map(str, key)).encode()) % HOLDOUT_MOD == 0
    return held_out if split == "test" else not held_out


def unknown_token_id(tokenizer: Any) -> int | None:
    """The id unknown words become: the declared unk token, else the one the Rust model uses
    (a tokenizer can map words to ``<unk>`` without declaring it)."""
    if tokenizer.unk_token_id is not None:
        return int(tokenizer.unk_token_id)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    unk = getattr(getattr(backend, "model", None), "unk_token", None)
    return None if not unk else backend.token_to_id(unk)


class TokenizerView:
    """An HF tokenizer seen through what tasks need: names, ids, single-token probes."""

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"tasks need a fast (Rust) Hugging Face tokenizer with offset mappings; "
                f"got {type(tokenizer).__name__}"
            )
        self.tok = tokenizer
        self.name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        self.bos_id = tokenizer.bos_token_id
        self.unk_id = unknown_token_id(tokenizer)
        pad = tokenizer.pad_token_id
        for alt in (tokenizer.eos_token_id, tokenizer.bos_token_id, 0):
            if pad is None:
                pad = alt
        self.pad_id = int(pad)
        self._probe_cache: dict[tuple[str, str, bool], int | None] = {}

    def encode(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Token ids and character offsets of each text (no special tokens)."""
        backend = getattr(self.tok, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer directly: same ids, less Python overhead
            return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(enc["input_ids"], enc["offset_mapping"]))

    @staticmethod
    def token_at(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> int | None:
        """Index of the one token covering ``span`` exactly, else None."""
        s, e = span
        hits = [i for i, (a, b) in enumerate(offsets) if a < e and b > s]
        if len(hits) != 1:
            return None
        a, b = offsets[hits[0]]
        # the token may include the separating space, but nothing of its neighbours
        if a < s - 1 or b > e:
            return None
        return hits[0]

    def probe(self, words: Sequence[str], left: str = "the", attach: bool = False) -> dict[str, int | None]:
        """Token id of each word when it follows ``left`` (None if not exactly one token)."""
        todo = [w for w in dict.fromkeys(words) if (left, w, attach) not in self._probe_cache]
        if todo:
            sep = "" if attach else " "
            texts = [left + sep + w for w in todo]
            for w, text, (ids, offs) in zip(todo, texts, self.encode(texts)):
                idx = self.token_at(offs, (len(text) - len(w), len(text)))
                ok = idx is not None and ids[idx] != self.unk_id
                self._probe_cache[(left, w, attach)] = int(ids[idx]) if ok else None
        return {w: self._probe_cache[(left, w, attach)] for w in words}

    def single_tokens(self, words: Sequence[str], *, task: str, what: str, minimum: int,
                      left: str = "the", attach: bool = False) -> list[str]:
        """The words that are one token in context; a clear error if fewer than ``minimum``."""
        ids = self.probe(words, left=left, attach=attach)
        kept = [w for w in words if ids[w] is not None]
        if len(kept) < minimum:
            dropped = [w for w in words if ids[w] is None]
            raise TaskVocabularyError(
                f"task {task!r} needs at least {minimum} {what} that are single tokens in tokenizer "
                f"{self.name!r}, but only {len(kept)} of {len(words)} are: {kept}. "
                f"Not single tokens: {dropped[:30]}{' ...' if len(dropped) > 30 else ''}"
            )
        return kept


@dataclass
class Example:
    """One clean/corrupted pair before tokenization."""

    template: int
    clean: dict[str, str]
    corrupted: dict[str, str]
    answer: str
    wrong: str
    candidates_correct: list[bool] | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # extra position name -> the slot it names


@dataclass
class TaskSpec:
    """What a task module hands to :func:`assemble`."""

    name: str
    templates: Sequence[str]
    template_names: Sequence[str]
    answer_attach: bool = False  # answers follow the prompt with no space (e.g. "17" "32")
    derived_positions: dict[str, tuple[str, int]] = field(default_factory=dict)
    answer_candidates: Sequence[str] | None = None
    corrupted_answer_is_wrong: bool = False  # the corrupted prompt's own answer is the wrong answer


def sample_examples(n: int, seed: int, sampler: Callable[[random.Random], Example | None],
                    task: str, max_tries_per_example: int = 200) -> list[Example]:
    """Draw ``n`` examples; ``sampler`` returns None to reject (e.g. wrong split)."""
    if n < 1:
        raise ValueError(f"n must be a positive number of prompts, got {n}")
    rng = random.Random(seed)
    out: list[Example] = []
    tries = 0
    while len(out) < n:
        ex = sampler(rng)
        tries += 1
        if ex is not None:
            out.append(ex)
        elif tries > max_tries_per_example * n:
            raise TaskVocabularyError(
                f"task {task!r}: could not draw {n} examples (got {len(out)} after {tries} tries); "
                "the vocabulary left after tokenizer filtering and the split is too small"
            )
    return out


@dataclass
class Tokenized:
    """One example after tokenization: rows, slot positions, answer ids."""

    example: Example
    clean_text: str
    corrupted_text: str
    clean: list[int]
    corrupted: list[int]
    positions: dict[str, int]
    answer_id: int
    wrong_id: int


def tokenize_examples(spec: TaskSpec, view: TokenizerView, examples: list[Example],
                      use_bos: bool) -> list[Tokenized | str]:
    """Tokenize each example; a string (the reason) replaces one that fails.

    An example fails when a slot is not exactly one token in its context, when
    an answer is not one token after the prompt, or when its clean and
    corrupted prompts do not align position by position.
    """
    parsed = [parse_template(t) for t in spec.templates]
    off = 1 if use_bos else 0
    texts: list[str] = []
    spans: list[dict[str, tuple[int, int]]] = []
    for ex in examples:
        for fill in (ex.clean, ex.corrupted):
            t, sp = render(parsed[ex.template], fill)
            texts.append(t)
            spans.append(sp)
    encoded = view.encode(texts)

    out: list[Tokenized | str] = []
    for i, ex in enumerate(examples):
        rows, poss, reason = [], [], None
        for j in (2 * i, 2 * i + 1):
            ids, offs = encoded[j]
            pos = {}
            for slot, span in spans[j].items():
                idx = view.token_at(offs, span)
                if idx is None:
                    reason = f"{texts[j][span[0]:span[1]]!r} is not one token in slot {slot}"
                    break
                pos[slot] = idx + off
            for alias, slot in ex.aliases.items():
                if slot in pos:
                    pos[alias] = pos[slot]
            rows.append(([view.bos_id] if use_bos else []) + list(ids))
            poss.append(pos)
        if reason is None and view.unk_id is not None and any(view.unk_id in r for r in rows):
            j = 2 * i + (view.unk_id not in rows[0])
            unknown = [texts[j][a:b] for t, (a, b) in zip(encoded[j][0], encoded[j][1]) if t == view.unk_id]
            reason = f"words unknown to the tokenizer: {sorted(set(unknown))}"
        if reason is None and (len(rows[0]) != len(rows[1]) or poss[0] != poss[1]):
            reason = f"clean and corrupted prompts do not align ({len(rows[0])} vs {len(rows[1])} tokens)"
        last_piece = parsed[ex.template][-1]
        last = ex.clean[last_piece.slot] if last_piece.slot is not None else last_piece.text
        ids = view.probe([ex.answer, ex.wrong], left=last, attach=spec.answer_attach)
        if reason is None and (ids[ex.answer] is None or ids[ex.wrong] is None):
            reason = f"answer {ex.answer!r} or {ex.wrong!r} is not one token after {last!r}"
        if reason is not None:
            out.append(reason)
        else:
            out.append(Tokenized(ex, texts[2 * i], texts[2 * i + 1], rows[0], rows[1], poss[0],
                                 int(ids[ex.answer]), int(ids[ex.wrong])))
    return out


def collect(spec: TaskSpec, view: TokenizerView, n: int, seed: int,
            sampler: Callable[[random.Random], Example | None], use_bos: bool,
            max_reject_fraction: float = 0.5) -> tuple[list[Tokenized], dict[str, int]]:
    """Draw examples until ``n`` tokenize cleanly; count the rejected ones by reason.

    Fails loudly (naming tokenizer and reasons) when more than
    ``max_reject_fraction`` of the drawn examples are rejected.
    """
    kept: list[Tokenized] = []
    rejected: dict[str, int] = {}
    drawn = 0
    round_ = 0
    bar = tqdm(total=n, desc=f"building {spec.name}", disable=n < PROGRESS_FROM, leave=False)
    while len(kept) < n:
        missing = n - len(kept)
        # first round: a 10% margin (usually nothing is rejected); later rounds: double
        want = missing + max(8, missing // 10) if round_ == 0 else max(8, 2 * missing)
        batch = sample_examples(want, seed * 1_000_003 + round_, sampler, spec.name)
        round_ += 1
        for t in tokenize_examples(spec, view, batch, use_bos):
            drawn += 1
            if isinstance(t, str):
                rejected[t] = rejected.get(t, 0) + 1
            elif len(kept) < n:
                kept.append(t)
                bar.update()
        n_rej = sum(rejected.values())
        if n_rej > max_reject_fraction * drawn and drawn >= 4 * n:
            worst = sorted(rejected.items(), key=lambda kv: -kv[1])[:5]
            raise TaskVocabularyError(
                f"task {spec.name!r}: {n_rej} of {drawn} drawn prompts do not tokenize cleanly in "
                f"tokenizer {view.name!r}; most common reasons: {worst}"
            )
    bar.close()
    return kept, rejected


def to_prompt_set(spec: TaskSpec, view: TokenizerView, items: list[Tokenized], use_bos: bool,
                  provenance: dict[str, Any]) -> PromptSet:
    """Pad tokenized examples into a PromptSet (positions, answers, candidates)."""
    n = len(items)
    lengths = [len(t.clean) for t in items]
    max_len = max(lengths)
    pad = view.pad_id
    clean = torch.full((n, max_len), pad, dtype=torch.long)
    corrupted = torch.full((n, max_len), pad, dtype=torch.long)
    for i, t in enumerate(items):
        clean[i, : lengths[i]] = torch.tensor(t.clean)
        corrupted[i, : lengths[i]] = torch.tensor(t.corrupted)

    names = sorted(set().union(*[set(t.positions) for t in items]))
    positions: dict[str, torch.Tensor] = {}
    for name in names:  # -1 marks a slot this prompt's template does not have
        positions[name] = torch.tensor([t.positions.get(name, -1) for t in items])
    for name, (base, delta) in spec.derived_positions.items():
        if base in positions:
            p = positions[base]
            positions[name] = torch.where(p >= 0, p + delta, p)
    positions["END"] = torch.tensor(lengths) - 1

    cands = mask = None
    if spec.answer_candidates is not None:
        parsed = [parse_template(t) for t in spec.templates]
        lefts = set()
        for t in items:
            p = parsed[t.example.template][-1]
            lefts.add(t.example.clean[p.slot] if p.slot is not None else p.text)
        cand_ids: list[int | None] = []
        for left in sorted(lefts):
            probe = view.probe(list(spec.answer_candidates), left=left, attach=spec.answer_attach)
            here = [probe[w] for w in spec.answer_candidates]
            if cand_ids and here != cand_ids:
                raise TaskVocabularyError(
                    f"task {spec.name!r}: answer candidates tokenize differently after {left!r} "
                    f"in tokenizer {view.name!r}"
                )
            cand_ids = here
        keep = [i for i, c in enumerate(cand_ids) if c is not None]
        cands = torch.tensor([cand_ids[i] for i in keep])
        mask = torch.tensor([[t.example.candidates_correct[i] for i in keep] for t in items], dtype=torch.bool)

    return PromptSet(
        task=spec.name,
        clean=clean,
        corrupted=corrupted,
        answers=torch.tensor([t.answer_id for t in items]),
        wrong_answers=torch.tensor([t.wrong_id for t in items]),
        lengths=torch.tensor(lengths),
        positions=positions,
        groups=torch.tensor([t.example.template for t in items]),
        pad_token_id=pad,
        clean_text=[t.clean_text for t in items],
        corrupted_text=[t.corrupted_text for t in items],
        answer_text=[t.example.answer for t in items],
        wrong_text=[t.example.wrong for t in items],
        group_names=list(spec.template_names),
        answer_candidates=cands,
        answer_mask=mask,
        corrupted_answers=torch.tensor([t.wrong_id for t in items]) if spec.corrupted_answer_is_wrong else None,
        provenance={"task": spec.name, "tokenizer": view.name, "tokenizer_fingerprint": fingerprint(view.tok),
                    "prepend_bos": use_bos, "n": n, **provenance},
    )


def prompt_set_from_texts(tokenizer: Any, clean: Sequence[str], corrupted: Sequence[str],
                          answers: Sequence[str], wrong_answers: Sequence[str], *,
                          task: str = "custom", prepend_bos: bool | None = None,
                          answer_prefix: str = " ") -> PromptSet:
    """Build a PromptSet from your own text pairs.

    Every clean/corrupted pair must tokenize to the same length, and every answer
    (``answer_prefix + answer``) must be one token; otherwise a clear error names
    the offending pair or word.
    """
    for name, value in (("clean", clean), ("corrupted", corrupted), ("answers", answers),
                        ("wrong_answers", wrong_answers)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list of strings, got {type(value).__name__} {value!r:.60}")
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        if bad:
            raise TypeError(f"{name}[{bad[0]}] must be a string, got {value[bad[0]]!r}")
    n = len(clean)
    if not (len(corrupted) == len(answers) == len(wrong_answers) == n):
        raise ValueError(
            f"clean ({n}), corrupted ({len(corrupted)}), answers ({len(answers)}) and "
            f"wrong_answers ({len(wrong_answers)}) must have the same length"
        )
    if n == 0:
        raise ValueError("no prompts given")
    view = TokenizerView(tokenizer)
    use_bos = view.bos_id is not None if prepend_bos is None else prepend_bos
    if use_bos and view.bos_id is None:
        raise ValueError(f"prepend_bos=True but tokenizer {view.name!r} has no BOS token")
    bos = [view.bos_id] if use_bos else []
    enc_c, enc_k = view.encode(list(clean)), view.encode(list(corrupted))
    for texts, enc, which in ((clean, enc_c, "clean"), (corrupted, enc_k, "corrupted")):
        for i, (text, (ids, offs)) in enumerate(zip(texts, enc)):
            if view.unk_id is not None and view.unk_id in ids:
                words = sorted({text[a:b] for t, (a, b) in zip(ids, offs) if t == view.unk_id})
                raise TaskVocabularyError(f"{which} prompt {i} has words unknown to tokenizer {view.name!r} "
                                          f"(they would become its unknown token): {words} in {text!r}")
    rows_c = [bos + ids for ids, _ in enc_c]
    rows_k = [bos + ids for ids, _ in enc_k]
    for i, (c, k) in enumerate(zip(rows_c, rows_k)):
        if len(c) != len(k):
            raise PromptAlignmentError(
                f"pair {i}: clean and corrupted prompts have different lengths "
                f"({len(c)} vs {len(k)} tokens) in tokenizer {view.name!r}:\n"
                f"  clean:     {clean[i]!r}\n  corrupted: {corrupted[i]!r}"
            )
    ans: list[int] = []
    for w in list(answers) + list(wrong_answers):
        ids = view.tok(answer_prefix + w, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise TaskVocabularyError(
                f"answer {answer_prefix + w!r} is {len(ids)} tokens in tokenizer {view.name!r}; it must be one"
            )
        if ids[0] == view.unk_id:
            raise TaskVocabularyError(f"answer {answer_prefix + w!r} is unknown to tokenizer {view.name!r}")
        ans.append(ids[0])
    lengths = [len(r) for r in rows_c]
    L = max(lengths)
    pad = lambda r: r + [view.pad_id] * (L - len(r))  # noqa: E731
    return PromptSet(
        task=task,
        clean=torch.tensor([pad(r) for r in rows_c]),
        corrupted=torch.tensor([pad(r) for r in rows_k]),
        answers=torch.tensor(ans[:n]),
        wrong_answers=torch.tensor(ans[n:]),
        lengths=torch.tensor(lengths),
        positions={"END": torch.tensor(lengths) - 1},
        groups=torch.zeros(n, dtype=torch.long),
        pad_token_id=view.pad_id,
        clean_text=list(clean),
        corrupted_text=list(corrupted),
        answer_text=list(answers),
        wrong_text=list(wrong_answers),
        group_names=[task],
        provenance={"task": task, "tokenizer": view.name, "tokenizer_fingerprint": fingerprint(view.tok),
                    "prepend_bos": use_bos, "n": n},
    )
