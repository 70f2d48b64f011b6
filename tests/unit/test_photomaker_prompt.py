"""PhotoMaker prompt rewrite on ComfyUI-style token lists (hand-built, real CLIP ids where it matters)."""

import pytest

from pulid_core.errors import PuLIDError
from pulid_core.photomaker.prompt import check_trigger, expand_class_tokens, remove_trigger

BOS, EOS = 49406, 49407
IMG, MAN = 24157, 786  # "img</w>", "man</w>"
A, PHOTO, OF, COMMA, BANG = 320, 1125, 539, 267, 0  # "a</w>", "photo</w>", "of</w>", ",</w>", "!</w>"
WEARING, GLASSES = 3309, 12056
PAD = {"l": EOS, "g": 0}


def chunks(ids, key, weights=None, length=77):
    """ComfyUI's SDXL tokenizer layout: BOS, up to 75 tokens, EOS, padding; several chunks if needed."""
    weights = weights or [1.0] * len(ids)
    entries = list(zip(ids, weights))
    out = []
    for s in range(0, max(len(entries), 1), length - 2):
        body = [(BOS, 1.0), *entries[s : s + length - 2], (EOS, 1.0)]
        out.append(body + [(PAD[key], 1.0)] * (length - len(body)))
    return out


def tokens(ids, weights=None):
    return {key: chunks(ids, key, weights) for key in ("l", "g")}


def ids_of(chunk_list):
    return [e[0] for chunk in chunk_list for e in chunk]


def true_positions(mask):
    return [i for i, m in enumerate(mask) if m]


PROMPT = [A, PHOTO, OF, A, MAN, IMG, WEARING, GLASSES]  # "a photo of a man img wearing glasses"


@pytest.mark.parametrize("n_images", [1, 2, 4])
@pytest.mark.parametrize("tokens_per_image", [1, 2])  # v1, v2
def test_class_token_repeated_and_tail_kept(n_images, tokens_per_image):
    copies = n_images * tokens_per_image
    new, mask = expand_class_tokens(tokens(PROMPT), [IMG], copies)
    content = [A, PHOTO, OF, A] + [MAN] * copies + [WEARING, GLASSES]
    for key in ("l", "g"):
        assert len(new[key]) == 1 and len(new[key][0]) == 77
        expected = [BOS, *content, EOS] + [PAD[key]] * (75 - len(content))
        assert ids_of(new[key]) == expected
    # "man" sits at position 5 after BOS, where the golden vectors put the mask.
    assert len(mask) == 77 and true_positions(mask) == list(range(5, 5 + copies))


def test_trigger_at_the_end_and_before_punctuation():
    new, mask = expand_class_tokens(tokens([A, MAN, IMG]), [IMG], 2)
    assert ids_of(new["l"])[:6] == [BOS, A, MAN, MAN, EOS, EOS]
    assert true_positions(mask) == [2, 3]
    new, mask = expand_class_tokens(tokens([A, MAN, IMG, COMMA, PHOTO]), [IMG], 2)
    assert ids_of(new["g"])[:7] == [BOS, A, MAN, MAN, COMMA, PHOTO, EOS]
    assert ids_of(new["g"])[7:] == [0] * 70
    assert true_positions(mask) == [2, 3]


def test_bang_token_zero_in_g_content_is_kept_and_padding_read_from_the_chunk():
    # "!" is id 0, the same as CLIP-G's pad id: only what follows EOS is padding.
    new, _ = expand_class_tokens(tokens([A, MAN, IMG, BANG]), [IMG], 1)
    assert ids_of(new["g"])[:5] == [BOS, A, MAN, BANG, EOS]
    assert ids_of(new["l"])[:6] == [BOS, A, MAN, BANG, EOS, EOS]
    odd_pad = {"l": [[(BOS, 1.0), (MAN, 1.0), (IMG, 1.0), (EOS, 1.0)] + [(7, 1.0)] * 73]}
    new, _ = expand_class_tokens(odd_pad, [IMG], 1)
    assert ids_of(new["l"]) == [BOS, MAN, EOS] + [7] * 74


def test_weights_are_carried_over():
    weights = [1.0, 1.0, 1.0, 1.0, 1.2, 0.5, 0.8, 0.8]
    new, _ = expand_class_tokens(tokens(PROMPT, weights), [IMG], 3)
    got = [w for _, w in new["l"][0][1:11]]
    assert got == [1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2, 0.8, 0.8, 1.0]


def test_word_ids_and_extra_fields_are_kept():
    toks = {
        key: [
            [(BOS, 1.0, 0), (A, 1.0, 1), (MAN, 1.1, 1), (IMG, 1.0, 1), (WEARING, 1.0, 2), (EOS, 1.0, 0)]
            + [(PAD[key], 1.0, 0)] * 71
        ]
        for key in ("l", "g")
    }
    new, mask = expand_class_tokens(toks, [IMG], 2)
    assert new["l"][0][:6] == [
        (BOS, 1.0, 0),
        (A, 1.0, 1),
        (MAN, 1.1, 1),
        (MAN, 1.1, 1),
        (WEARING, 1.0, 2),
        (EOS, 1.0, 0),
    ]
    assert new["g"][0][6] == (0, 1.0, 0)
    assert true_positions(mask) == [2, 3]


def test_multi_token_trigger_is_matched_as_a_whole_sequence():
    photom, aker = 9000, 9001
    new, mask = expand_class_tokens(tokens([A, MAN, photom, aker, WEARING, photom]), [photom, aker], 2)
    assert ids_of(new["l"])[:7] == [BOS, A, MAN, MAN, WEARING, photom, EOS]
    assert true_positions(mask) == [2, 3]


def test_long_prompt_is_rechunked_and_the_mask_spans_all_chunks():
    filler = [1000 + i for i in range(80)]
    ids = filler[:60] + [MAN, IMG] + filler[60:]  # 82 tokens -> 2 chunks
    new, mask = expand_class_tokens(tokens(ids), [IMG], 4)
    for key in ("l", "g"):
        assert len(new[key]) == 2 and all(len(c) == 77 for c in new[key])
        flat = ids_of(new[key])
        assert flat[0] == BOS and flat[77] == BOS
        content = [t for t in flat if t not in (BOS, EOS, PAD[key])]
        assert content == filler[:60] + [MAN] * 4 + filler[60:]
    assert len(mask) == 154 and true_positions(mask) == [61, 62, 63, 64]
    # The tail continues in the second chunk.
    assert ids_of(new["l"])[77:80] == [BOS, filler[71], filler[72]]


def test_class_copies_are_not_split_across_chunks():
    filler = [1000 + i for i in range(72)]
    new, mask = expand_class_tokens(tokens(filler + [MAN, IMG, WEARING]), [IMG], 4)
    # 72 + 4 copies exceed 75: the run moves to a new chunk with its own context.
    first, second = new["l"]
    assert [e[0] for e in first[:74]] == [BOS, *filler, EOS] and first[74][0] == EOS
    assert [e[0] for e in second[:7]] == [BOS, MAN, MAN, MAN, MAN, WEARING, EOS]
    assert true_positions(mask) == [78, 79, 80, 81]
    with pytest.raises(PuLIDError, match="76 class-token copies do not fit"):
        expand_class_tokens(tokens([MAN, IMG]), [IMG], 76)


@pytest.mark.parametrize(
    "ids,message",
    [
        ([A, MAN, WEARING], "No trigger word 'img' found"),
        ([A, MAN, IMG, OF, A, MAN, IMG], "'img' 2 times"),
        ([IMG, OF, A, MAN], "first word"),
    ],
)
def test_token_level_errors(ids, message):
    with pytest.raises(PuLIDError, match=message):
        expand_class_tokens(tokens(ids), [IMG], 2, trigger_name="img")


def test_disagreeing_encoders_and_bad_chunks_are_errors():
    toks = {"l": chunks([A, MAN, IMG], "l"), "g": chunks([A, A, MAN, IMG], "g")}
    with pytest.raises(PuLIDError, match="different positions"):
        expand_class_tokens(toks, [IMG], 2)
    with pytest.raises(PuLIDError, match="not CLIP chunks"):
        expand_class_tokens({"l": [[(A, 1.0), (MAN, 1.0)]]}, [IMG], 1)
    with pytest.raises(PuLIDError, match="at least one ID image"):
        expand_class_tokens(tokens([MAN, IMG]), [IMG], 0)


@pytest.mark.parametrize(
    "text,problem",
    [
        ("a photo of a man img", None),
        ("a photo of a man img wearing sunglasses", None),
        ("a photo of a man img, colorful", None),
        ("a photo of a (man:1.2) img", None),
        ("a photo of a man IMG", None),  # CLIP lowercases, so the token matches
        ("a photo of a man", "add 'img' right after the class word"),
        ("a man img and a woman img", "appears 2 times"),
        ("a man img from imgur", "part of the word 'imgur'"),
        ("a photo of a manimg", "part of the word 'manimg'"),
        ("img of a man", "no class word right before 'img'"),
        ("a photo, img", "no class word right before 'img'"),
    ],
)
def test_check_trigger(text, problem):
    result = check_trigger(text, "img")
    if problem is None:
        assert result is None
    else:
        assert problem in result


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a photo of a man img", "a photo of a man"),
        ("a man img, colorful", "a man, colorful"),
        ("a man img wearing glasses", "a man wearing glasses"),
        ("a woman   img\nin a park", "a woman\nin a park"),
    ],
)
def test_remove_trigger(text, expected):
    assert remove_trigger(text, "img") == expected


def test_remove_trigger_refuses_bad_prompts():
    with pytest.raises(PuLIDError, match="separate word"):
        remove_trigger("a manimg", "img")
