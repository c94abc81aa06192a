"""Sequence log-probs: masking of prompt and padding, one forward for both answers, the reference cache."""

from __future__ import annotations

import pytest
import torch

from hybridrl.preference.data import PreferenceDataConfig, tokenize_pairs
from hybridrl.preference.layouts import collate_pairs
from hybridrl.preference.logprobs import cached_reference_logps, compute_reference_logps, sequence_logps
from hybridrl.preference.models import load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def setup(tiny_lm, text_rows):
    tokenizer = load_tokenizer(tiny_lm[0])
    model = load_causal_lm(tiny_lm[0]).eval()
    pairs, _ = tokenize_pairs(text_rows, tokenizer, PreferenceDataConfig())
    return model, tokenizer, pairs


def loop_logps(model, ids: list[int], prompt_length: int) -> float:
    """Reference implementation: one sequence at a time, full log-softmax, explicit loop."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return sum(float(log_probs[t - 1, ids[t]]) for t in range(prompt_length, len(ids)))


def assert_same_as_concatenated(model, concatenated, layout_logps, batch):
    """Another batch layout gives the concatenated batch's log-probs, lengths and gradients."""
    a, lengths_a = sequence_logps(model, concatenated)
    b, lengths_b = layout_logps(model, batch)
    assert torch.allclose(a, b, atol=1e-5) and torch.equal(lengths_a, lengths_b)
    grads_a = torch.autograd.grad(a.sum(), list(model.parameters()))
    grads_b = torch.autograd.grad(b.sum(), list(model.parameters()))
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(grads_a, grads_b, strict=True))


def test_matches_a_per_sequence_loop(setup):
    model, tokenizer, pairs = setup
    indices = [0, 3, 5]
    batch = collate_pairs(pairs, indices, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logps, lengths = sequence_logps(model, batch)
    expected = [loop_logps(model, pairs.chosen_ids[i], pairs.chosen_prompt_lengths[i]) for i in indices] + [
        loop_logps(model, pairs.rejected_ids[i], pairs.rejected_prompt_lengths[i]) for i in indices
    ]
    assert logps.tolist() == pytest.approx(expected, abs=1e-4)
    assert lengths.tolist() == [len(pairs.chosen_ids[i]) - 10 for i in indices] + [
        len(pairs.rejected_ids[i]) - 10 for i in indices
    ]


def test_padding_and_prompt_logits_are_masked(setup):
    model, tokenizer, pairs = setup
    batch = collate_pairs(pairs, [1, 2], pad_token_id=tokenizer.pad_token_id)
    other_pad = collate_pairs(pairs, [1, 2], pad_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        a, _ = sequence_logps(model, batch)
        b, _ = sequence_logps(model, other_pad)
    assert torch.allclose(a, b, atol=1e-5)  # the pad token's identity does not matter
    # a pair batched alone or with a longer partner gives the same log-probs
    with torch.no_grad():
        alone, _ = sequence_logps(model, collate_pairs(pairs, [1], pad_token_id=tokenizer.pad_token_id))
    assert torch.allclose(alone, a.view(2, 2)[:, 0], atol=1e-5)


def test_gradient_reaches_the_model(setup):
    model, tokenizer, pairs = setup
    batch = collate_pairs(pairs, [0, 1], pad_token_id=tokenizer.pad_token_id)
    logps, _ = sequence_logps(model, batch)
    logps.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_reference_table_and_cache(setup, tmp_path):
    model, tokenizer, pairs = setup
    table = compute_reference_logps(model, pairs, pad_token_id=tokenizer.pad_token_id, batch_size=5)
    batch = collate_pairs(pairs, list(range(len(pairs))), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        direct, _ = sequence_logps(model, batch)
    assert torch.allclose(table, direct.view(2, -1).t(), atol=1e-5)
    first, hit = cached_reference_logps(model, pairs, tmp_path, pad_token_id=tokenizer.pad_token_id)
    assert not hit and len(list(tmp_path.glob("ref_logps-*.pt"))) == 1
    second, hit = cached_reference_logps(model, pairs, tmp_path, pad_token_id=tokenizer.pad_token_id)
    assert hit and torch.equal(first, second)
    # shards fill disjoint rows that sum to the whole table
    halves = [
        compute_reference_logps(model, pairs, pad_token_id=tokenizer.pad_token_id, shard=(r, 2))
        for r in (0, 1)
    ]
    assert torch.allclose(halves[0] + halves[1], table, atol=1e-5)


def test_lora_reference_is_the_base_model(setup):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    model, tokenizer, pairs = setup
    base = compute_reference_logps(model, pairs, pad_token_id=tokenizer.pad_token_id)
    import copy

    lora = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    with_adapter = collate_pairs(pairs, list(range(len(pairs))), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        adapted, _ = sequence_logps(lora, with_adapter)
    assert not torch.allclose(adapted.view(2, -1).t(), base, atol=1e-3)  # the adapter changes the policy...
    assert torch.allclose(
        compute_reference_logps(lora, pairs, pad_token_id=tokenizer.pad_token_id), base, atol=1e-5
    )


def test_shared_prompt_layout_equals_concatenated(setup):
    from hybridrl.preference.layouts import collate_shared_prompt, shares_prompts
    from hybridrl.preference.logprobs import shared_prompt_logps

    model, tokenizer, pairs = setup
    indices = list(range(8))
    assert shares_prompts(pairs, indices)
    concatenated = collate_pairs(pairs, indices, pad_token_id=tokenizer.pad_token_id)
    shared = collate_shared_prompt(pairs, indices, pad_token_id=tokenizer.pad_token_id)
    assert shared.num_tokens() == concatenated.num_tokens()
    assert_same_as_concatenated(model, concatenated, shared_prompt_logps, shared)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_layout_equals_concatenated(setup, tiny_lm, attention):
    from hybridrl.preference.layouts import collate_packed
    from hybridrl.preference.logprobs import packed_logps

    _, tokenizer, pairs = setup
    model = load_causal_lm(tiny_lm[0], attn_implementation=attention).eval()
    indices = list(range(2, 13))
    concatenated = collate_pairs(pairs, indices, pad_token_id=tokenizer.pad_token_id)
    longest = max(len(pairs.chosen_ids[i]) + len(pairs.rejected_ids[i]) for i in indices)
    packed = collate_packed(pairs, indices, pad_token_id=tokenizer.pad_token_id, row_length=longest)
    assert 1 < packed.input_ids.size(0) < len(indices)  # several pairs share a row, and rows end padded
    assert bool((packed.segment == -1).any())
    assert packed.num_tokens() == concatenated.num_tokens()
    assert_same_as_concatenated(model, concatenated, packed_logps, packed)


def test_packed_rows_hold_each_prompt_once_and_respect_the_row_length(setup):
    from hybridrl.preference.layouts import CHOSEN, PROMPT, REJECTED, collate_packed

    _, tokenizer, pairs = setup
    indices = list(range(16))
    sizes = [len(pairs.chosen_ids[i]) + len(pairs.rejected_ids[i]) - pairs.chosen_prompt_lengths[i] for i in indices]
    packed = collate_packed(pairs, indices, pad_token_id=tokenizer.pad_token_id, row_length=2 * max(sizes))
    assert packed.input_ids.size(1) <= 2 * max(sizes)
    assert int((packed.segment >= 0).sum()) == sum(sizes)  # nothing twice, nothing lost
    for slot, i in enumerate(indices):
        prompt = pairs.chosen_prompt_lengths[i]
        for part, sequence in ((PROMPT, pairs.chosen_ids[i][:prompt]), (CHOSEN, pairs.chosen_ids[i][prompt:]),
                               (REJECTED, pairs.rejected_ids[i][prompt:])):
            where = (packed.segment == slot) & (packed.branch == part)
            assert packed.input_ids[where].tolist() == sequence
            offset = 0 if part == PROMPT else prompt
            assert packed.position_ids[where].tolist() == list(range(offset, offset + len(sequence)))


def test_attention_kernels_without_custom_masks_are_not_packed():
    from types import SimpleNamespace

    from hybridrl.preference.logprobs import packing_mask_kind

    def model(implementation):
        return SimpleNamespace(config=SimpleNamespace(_attn_implementation=implementation))

    assert packing_mask_kind(model("sdpa")) == "bool"
    assert packing_mask_kind(model("eager")) == "float"
    assert packing_mask_kind(model("flash_attention_2")) is None


def test_completion_logps_of_flat_sequences_are_the_concatenated_layouts(setup):
    from hybridrl.preference.logprobs import completion_logps

    model, tokenizer, pairs = setup
    indices = [0, 3, 5, 7]
    with torch.no_grad():
        expected, _ = sequence_logps(model, collate_pairs(pairs, indices, pad_token_id=tokenizer.pad_token_id))
    sequences = [pairs.chosen_ids[i] for i in indices] + [pairs.rejected_ids[i] for i in indices]
    starts = [pairs.chosen_prompt_lengths[i] for i in indices] + [pairs.rejected_prompt_lengths[i] for i in indices]
    model.train()
    flat = completion_logps(model, sequences, starts, pad_token_id=tokenizer.pad_token_id, batch_size=3)
    assert model.training and not flat.requires_grad  # the mode is restored, and no graph is kept
    model.eval()
    assert torch.allclose(flat, expected, atol=1e-5)


def test_collate_picks_the_layout_and_every_layout_scores_itself_alike(setup):
    from hybridrl.preference.layouts import PackedPairBatch, PairBatch, SharedPromptBatch, collate, pair_logps

    model, tokenizer, pairs = setup
    expected = {(False, False): PairBatch, (False, True): PairBatch, (True, False): SharedPromptBatch,
                (True, True): PackedPairBatch}
    with torch.no_grad():
        reference, lengths = sequence_logps(model, collate_pairs(pairs, [1, 4, 6], pad_token_id=tokenizer.pad_token_id))
        for (share, pack), layout in expected.items():
            batch = collate(pairs, [1, 4, 6], pad_token_id=tokenizer.pad_token_id, share_prompt=share, pack=pack)
            assert type(batch) is layout
            logps, counts = pair_logps(model, batch)
            assert torch.allclose(logps, reference, atol=1e-5) and torch.equal(counts, lengths)
