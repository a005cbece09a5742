"""pipeline.text: the umt5 T5 encoder against the official golden and manifest, loading,
tokenizers and PromptEncoder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from headcast.pipeline.checkpoint import CheckpointError, materialize
from headcast.pipeline.text import (
    DEFAULT_PROMPT,
    HASH_END_ID,
    HASH_PAD_ID,
    HashTokenizer,
    PromptEncoder,
    T5Config,
    T5Encoder,
    Umt5Tokenizer,
    clean_prompt,
    load_t5,
    relative_position_buckets,
)
from tests.reference import (
    Golden,
    assert_state_matches_manifest,
    load_golden,
    load_manifest,
    rel_err,
)

GOLDEN_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def golden() -> Golden:
    return load_golden("t5_tiny")


@pytest.fixture(scope="module")
def encoder(golden: Golden) -> T5Encoder:
    model = T5Encoder(T5Config.from_dict(golden.config))
    model.load_state_dict(golden.state, strict=True)
    return model.eval().requires_grad_(False)


def test_golden_config_is_the_tiny_preset(golden: Golden) -> None:
    assert T5Config.from_dict(golden.config) == T5Config.tiny()


def test_matches_official_golden(golden: Golden, encoder: T5Encoder) -> None:
    ids, mask = golden.inputs["ids"], golden.inputs["mask"]
    assert 0 < int(mask.sum()) < mask.shape[1], "the golden should exercise padding"
    with torch.no_grad():
        hidden = encoder(ids, mask)
    valid = int(mask.sum())
    assert rel_err(hidden, golden.outputs["hidden"]) < GOLDEN_TOLERANCE
    assert rel_err(hidden[:, :valid], golden.outputs["hidden"][:, :valid]) < GOLDEN_TOLERANCE


def test_buckets_match_hugging_face_t5() -> None:
    from transformers.models.t5.modeling_t5 import T5Attention as HFT5Attention

    for num_buckets, length in ((8, 10), (32, 600)):
        ours = relative_position_buckets(
            length, num_buckets=num_buckets, max_distance=128, device=torch.device("cpu")
        )
        positions = torch.arange(length)
        theirs = HFT5Attention._relative_position_bucket(
            positions[None, :] - positions[:, None],
            bidirectional=True,
            num_buckets=num_buckets,
            max_distance=128,
        )
        assert torch.equal(ours, theirs)
    # 600 tokens reach past max_distance both ways: every bucket is used but 16, which would
    # be "distance 0, key after the query".
    assert torch.unique(ours).tolist() == [b for b in range(32) if b != 16]


def test_full_size_meta_model_matches_manifest() -> None:
    manifest = load_manifest("umt5_xxl_encoder")
    with torch.device("meta"):
        model = T5Encoder(T5Config.umt5_xxl())
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert_state_matches_manifest(shapes, manifest)
    # The whole file loads strictly (meta tensors stand in for the 11 GB of weights).
    state = {key: torch.empty(shape, device="meta") for key, shape in manifest.items()}
    loaded = materialize(lambda: T5Encoder(T5Config.umt5_xxl()), state, device="meta")
    assert loaded.blocks[23].pos_embedding is not None  # one position table per layer


def test_load_t5_from_saved_file(tmp_path: Path, golden: Golden, encoder: T5Encoder) -> None:
    path = tmp_path / "t5.pth"
    torch.save(golden.state, path)
    loaded = load_t5(path, device="cpu", dtype=torch.float32, config=T5Config.tiny())
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    ids, mask = golden.inputs["ids"], golden.inputs["mask"]
    with torch.no_grad():
        out = loaded(ids, mask)
        assert torch.equal(out, encoder(ids, mask))
    assert rel_err(out, golden.outputs["hidden"]) < GOLDEN_TOLERANCE


def test_load_t5_in_bfloat16_stays_close(tmp_path: Path, golden: Golden) -> None:
    path = tmp_path / "t5.pth"
    torch.save(golden.state, path)
    loaded = load_t5(path, device="cpu", dtype=torch.bfloat16, config=T5Config.tiny())
    with torch.no_grad():
        out = loaded(golden.inputs["ids"], golden.inputs["mask"])
    assert out.dtype == torch.bfloat16
    assert rel_err(out, golden.outputs["hidden"]) < 5e-2  # bf16 has ~3 significant digits


def test_shared_position_table_equals_identical_per_layer_tables(golden: Golden) -> None:
    table = golden.state["blocks.0.pos_embedding.embedding.weight"]
    per_layer_state = {
        key: (table if key.endswith("pos_embedding.embedding.weight") else value)
        for key, value in golden.state.items()
    }
    shared_state = {key: value for key, value in golden.state.items() if "pos_embedding" not in key}
    shared_state["pos_embedding.embedding.weight"] = table
    per_layer = T5Encoder(T5Config.tiny())
    per_layer.load_state_dict(per_layer_state, strict=True)
    shared = T5Encoder(replace(T5Config.tiny(), shared_pos=True))
    shared.load_state_dict(shared_state, strict=True)
    ids, mask = golden.inputs["ids"], golden.inputs["mask"]
    with torch.no_grad():
        torch.testing.assert_close(shared(ids, mask), per_layer(ids, mask))


def test_load_t5_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="headcast doctor"):
        load_t5(tmp_path / "missing.pth", device="cpu", dtype=torch.float32)


def test_load_t5_rejects_a_state_that_does_not_fit(tmp_path: Path, golden: Golden) -> None:
    state = dict(golden.state)
    del state["blocks.1.pos_embedding.embedding.weight"]
    path = tmp_path / "t5.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="pos_embedding"):
        load_t5(path, device="cpu", dtype=torch.float32, config=T5Config.tiny())


def test_config_validation_names_bad_values() -> None:
    with pytest.raises(ValueError, match="dim_attn=30 must be divisible by num_heads=4"):
        T5Config.from_dict({**T5Config.tiny().__dict__, "dim_attn": 30})
    with pytest.raises(ValueError, match="unknown T5Config keys \\['vocab_size'\\]"):
        T5Config.from_dict({**T5Config.tiny().__dict__, "vocab_size": 3})


def test_hash_tokenizer_pads_truncates_and_marks_the_end() -> None:
    tokenizer = HashTokenizer(vocab_size=100, text_len=8)
    short = tokenizer.tokenize("  ab\n c ")  # cleaned to "ab c": 4 bytes + end
    assert short.ids.shape == short.mask.shape == (1, 8)
    assert short.mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert short.ids[0, 4] == HASH_END_ID
    assert (short.ids[0, 5:] == HASH_PAD_ID).all()
    assert torch.equal(short.ids, tokenizer.tokenize("ab c").ids)
    long = tokenizer.tokenize("x" * 50)
    assert long.mask.sum() == 8 and long.ids[0, -1] == HASH_END_ID
    assert int(long.ids.max()) < 100


def test_prompt_encoder_returns_the_valid_rows(encoder: T5Encoder) -> None:
    prompt = "A person is talking."
    tokenizer = HashTokenizer(vocab_size=encoder.config.vocab, text_len=32)
    tokens = tokenizer.tokenize(prompt)
    rows = PromptEncoder(tokenizer, encoder).encode(prompt)
    valid = int(tokens.mask.sum())
    assert valid == len(prompt.encode()) + 1
    assert rows.shape == (valid, encoder.config.dim)
    with torch.no_grad():
        assert torch.equal(rows, encoder(tokens.ids, tokens.mask)[0, :valid])
    # Padding is masked out: a longer pad gives the same valid rows.
    longer = PromptEncoder(HashTokenizer(encoder.config.vocab, text_len=64), encoder)
    torch.testing.assert_close(longer.encode(prompt), rows, rtol=1e-5, atol=1e-5)


def test_prompt_encoder_defaults_to_the_official_prompt(encoder: T5Encoder) -> None:
    prompt_encoder = PromptEncoder(HashTokenizer(encoder.config.vocab, text_len=128), encoder)
    assert torch.equal(prompt_encoder.encode(), prompt_encoder.encode(DEFAULT_PROMPT))
    assert prompt_encoder.encode().shape[0] == len(DEFAULT_PROMPT.encode()) + 1


def test_clean_prompt_unescapes_html_and_collapses_whitespace() -> None:
    assert clean_prompt("  fish &amp;amp; chips\n\t now ") == "fish & chips now"


def _save_word_level_tokenizer(directory: Path) -> None:
    """A tiny real Hugging Face tokenizer with umt5's special ids (pad 0, </s> 1, unk 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "person": 4, "talks": 5, "&": 6}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    wrapped.save_pretrained(str(directory))


def test_umt5_tokenizer_pads_to_text_len_with_a_mask(tmp_path: Path) -> None:
    _save_word_level_tokenizer(tmp_path)
    tokenizer = Umt5Tokenizer.from_dir(tmp_path, text_len=8)
    tokens = tokenizer.tokenize(" a  person &amp; talks ")
    assert tokens.ids[0].tolist() == [3, 4, 6, 5, 1, 0, 0, 0]
    assert tokens.mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    truncated = tokenizer.tokenize("a " * 20)
    assert truncated.mask.sum() == 8 and truncated.ids[0, -1] == 1


def test_umt5_tokenizer_missing_dir_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="headcast doctor"):
        Umt5Tokenizer.from_dir(tmp_path / "google" / "umt5-xxl")
