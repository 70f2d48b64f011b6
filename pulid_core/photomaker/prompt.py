"""PhotoMaker's prompt rewrite, at token level on ComfyUI's tokenizer output.

The authors delete the trigger word ("img") and repeat the class word right before it
("man") once per ID token (v1: N copies, v2: 2N). Each copy is then encoded by both
SDXL text encoders and fused with its own ID token. Unlike the official code we keep
multi-chunk prompts (re-chunked to 75 tokens + BOS/EOS), match the trigger only as
whole tokens, and refuse ambiguous prompts with a message instead of guessing.

Tokens come as ComfyUI gives them: ``{"l": [chunk, ...], "g": [chunk, ...]}``, each chunk
a list of ``(token_id, weight[, word_id])`` tuples of fixed length (77), starting with
BOS and ending with EOS and padding. The pad id differs between encoders (SDXL: 49407
for "l", 0 for "g") and is read from the chunks.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence

from ..errors import PuLIDError

CLIP_EOS = 49407
# SDXL's CLIP-G tokenizer pads with id 0, CLIP-L with EOS; used only when no chunk shows padding.
_SDXL_PAD_FALLBACK = {"g": 0}


def _token_id(entry):
    """The integer id of a token entry; None for textual-inversion embeddings (tensors)."""
    tid = entry[0]
    return int(tid) if isinstance(tid, numbers.Integral) else None


def _split_chunks(chunks: Sequence[Sequence[tuple]], key: str, eos_id: int):
    """Content entries (without BOS/EOS/padding) of all chunks, and the BOS/EOS/pad entries."""
    if not chunks or not chunks[0]:
        raise PuLIDError(f"The '{key}' token list is empty: tokenize the prompt with the model's CLIP first.")
    bos = chunks[0][0]
    eos = pad = None
    content = []
    for chunk in chunks:
        ids = [_token_id(e) for e in chunk]
        end = next((i for i in range(1, len(chunk)) if ids[i] == eos_id), None)
        if ids[0] != _token_id(bos) or end is None:
            raise PuLIDError(
                f"The '{key}' tokens are not CLIP chunks (BOS ... EOS padding): tokenize with an SDXL CLIP."
            )
        content.extend(chunk[1:end])
        eos = chunk[end]
        if pad is None and end + 1 < len(chunk):
            pad = chunk[end + 1]
    return content, bos, eos, pad


def _find_trigger(ids: list, trigger_ids: Sequence[int]) -> list[int]:
    n = len(trigger_ids)
    return [i for i in range(len(ids) - n + 1) if ids[i : i + n] == list(trigger_ids)]


def _expand_one(chunks, key, trigger_ids, copies, trigger_name, eos_id, pad_id):
    content, bos, eos, pad = _split_chunks(chunks, key, eos_id)
    chunk_len = len(chunks[0])
    capacity = chunk_len - 2
    if pad is None:
        pad_id = _SDXL_PAD_FALLBACK.get(key, eos_id) if pad_id is None else pad_id
        pad = (pad_id, *eos[1:])
    elif pad_id is not None:
        pad = (pad_id, *pad[1:])

    hits = _find_trigger([_token_id(e) for e in content], trigger_ids)
    if not hits:
        raise PuLIDError(
            f"No {trigger_name} found in the prompt: write it right after the class word, e.g. 'a man img'."
        )
    if len(hits) > 1:
        raise PuLIDError(
            f"The prompt has the {trigger_name} {len(hits)} times: use it once, after the class word."
        )
    start = hits[0]
    if start == 0:
        raise PuLIDError(
            f"The {trigger_name} is the first word of the prompt: put the class word (man, woman, girl, ...) "
            "right before it."
        )
    if copies > capacity:
        raise PuLIDError(
            f"{copies} class-token copies do not fit in one {chunk_len}-token chunk: use fewer ID images."
        )
    before, cls, after = content[: start - 1], content[start - 1], content[start + len(trigger_ids) :]

    out_chunks, mask = [], []
    current: list = []
    class_slots: dict[int, range] = {}  # chunk index -> content slots holding the copies

    def close():
        body = [bos, *current, eos]
        out_chunks.append(body + [pad] * (chunk_len - len(body)))
        flags = [False] * chunk_len
        for i in class_slots.get(len(out_chunks) - 1, ()):
            flags[i + 1] = True
        mask.extend(flags)
        current.clear()

    for entry in before:
        if len(current) == capacity:
            close()
        current.append(entry)
    # Keep all copies in one chunk so they share the same text context, as in the official 77-token prompt.
    if len(current) + copies > capacity:
        close()
    class_slots[len(out_chunks)] = range(len(current), len(current) + copies)
    current.extend([cls] * copies)
    for entry in after:
        if len(current) == capacity:
            close()
        current.append(entry)
    close()
    return out_chunks, mask


def expand_class_tokens(
    tokens: Mapping[str, Sequence[Sequence[tuple]]],
    trigger_ids: Sequence[int],
    copies: int,
    *,
    trigger_name: str = "trigger word",
    eos_id: int = CLIP_EOS,
    pad_ids: Mapping[str, int] | None = None,
) -> tuple[dict, list[bool]]:
    """Delete the trigger token sequence and repeat the class token before it ``copies`` times.

    ``copies`` = number of ID images x ID tokens per image (v1: 1, v2: 2). Copies inherit the
    class token's weight; text after the trigger is kept; the result is re-chunked into
    ``len(chunk)``-token chunks. Returns ``(new_tokens, class_mask)``, the mask a list of bools
    over the concatenated chunks, the same for every encoder key.
    """
    if copies < 1:
        raise PuLIDError("PhotoMaker needs at least one ID image.")
    trigger_ids = [int(t) for t in trigger_ids]
    if not trigger_ids:
        raise PuLIDError("The trigger word tokenized to nothing: choose a word such as 'img'.")
    name = f"trigger word {trigger_name!r}" if trigger_name != "trigger word" else trigger_name
    new_tokens, masks = {}, {}
    for key, chunks in tokens.items():
        pad_id = None if pad_ids is None else pad_ids.get(key)
        new_tokens[key], masks[key] = _expand_one(chunks, key, trigger_ids, copies, name, eos_id, pad_id)
    keys = list(masks)
    for key in keys[1:]:
        if masks[key] != masks[keys[0]]:
            raise PuLIDError(
                f"The class word lands at different positions for the '{keys[0]}' and '{key}' text encoders: "
                "both must use the same CLIP vocabulary."
            )
    return new_tokens, masks[keys[0]] if keys else []


def _occurrences(text: str, trigger: str):
    """(start, end, whole_word) for every case-insensitive occurrence of the trigger.

    CLIP's tokenizer lowercases and splits words at letter-run boundaries, so a trigger
    is a token of its own exactly when no letter touches it.
    """
    out = []
    # Matched case-insensitively in the text itself: offsets into text.lower() drift where lowering
    # changes a character's length (Turkish 'İ' becomes two).
    for m in re.finditer(re.escape(trigger), text, re.IGNORECASE):
        s, e = m.span()
        touches = (s > 0 and text[s - 1].isalpha()) or (e < len(text) and text[e].isalpha())
        out.append((s, e, not touches))
    return out


def _word_around(text: str, s: int, e: int) -> str:
    while s > 0 and text[s - 1].isalnum():
        s -= 1
    while e < len(text) and text[e].isalnum():
        e += 1
    return text[s:e]


# ComfyUI's emphasis around the trigger alone, "(img)" or "(img:1.2)": the tokens are the same as
# without it (the weight goes to the deleted trigger), so the class word may stand before the "(".
_EMPHASIS_OPEN = re.compile(r"\(\s*$")
_EMPHASIS_CLOSE = re.compile(r"^\s*(?::\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*)?\)")


def _emphasis_span(text: str, s: int, e: int) -> tuple[int, int]:
    """(start, end) of the trigger with the emphasis brackets that hold nothing else, nested ones too."""
    while (opened := _EMPHASIS_OPEN.search(text[:s])) and (closed := _EMPHASIS_CLOSE.match(text[e:])):
        s, e = opened.start(), e + closed.end()
    return s, e


def check_trigger(text: str, trigger: str) -> str | None:
    """The message explaining why ``text`` cannot be a PhotoMaker prompt, or None if it can."""
    trigger = trigger.strip()
    if not trigger:
        return "The trigger word is empty: use a word such as 'img'."
    hits = _occurrences(text, trigger)
    inside = [h for h in hits if not h[2]]
    if inside:
        word = _word_around(text, inside[0][0], inside[0][1])
        return (
            f"The trigger word '{trigger}' is part of the word '{word}': write it as a separate word right after "
            f"the class word (e.g. 'a man {trigger}'), and rephrase '{word}'."
        )
    if not hits:
        return f"The prompt has no trigger word: add '{trigger}' right after the class word, e.g. 'a photo of a man {trigger}'."
    if len(hits) > 1:
        return f"The trigger word '{trigger}' appears {len(hits)} times: use it once, right after the class word."
    before = text[: _emphasis_span(text, hits[0][0], hits[0][1])[0]].rstrip()
    if not before or not (before[-1].isalnum() or before[-1] == ")"):
        return (
            f"There is no class word right before '{trigger}': write the class word (man, woman, girl, ...) "
            f"immediately before it, e.g. 'a photo of a man {trigger}'."
        )
    return None


def remove_trigger(text: str, trigger: str) -> str:
    """The text-only prompt (class word kept once, trigger deleted) for the early, style-strength steps."""
    problem = check_trigger(text, trigger)
    if problem:
        raise PuLIDError(problem)
    s, e = _emphasis_span(text, *_occurrences(text, trigger.strip())[0][:2])
    head = text[:s].rstrip()
    return head + text[e:]
