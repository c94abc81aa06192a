"""Loading, tokenization, truncation and the rejection of bad rows."""

from __future__ import annotations

import json

import pytest

from hybridrl.preference.data import (
    PreferenceDataConfig,
    PreferenceDataError,
    load_preference_dataset,
    split_implicit_prompt,
    tokenize_pairs,
)
from hybridrl.preference.layouts import collate_pairs
from hybridrl.preference.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    return load_tokenizer(tiny_lm[0])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", "dir"])
def test_loads_files_and_directories(tmp_path, text_rows, suffix):
    from datasets import Dataset

    dataset = Dataset.from_list(text_rows)
    if suffix == ".jsonl":
        source = write_jsonl(tmp_path / "pairs.jsonl", text_rows)
    elif suffix == ".parquet":
        source = tmp_path / "pairs.parquet"
        dataset.to_parquet(str(source))
    else:
        source = tmp_path / "saved"
        dataset.save_to_disk(str(source))
    loaded = load_preference_dataset(source)
    assert loaded.num_rows == len(text_rows) and loaded[0] == text_rows[0]


def test_missing_column_is_one_line_naming_column_and_fix(tmp_path):
    source = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "worse": "c"}])
    with pytest.raises(PreferenceDataError) as info:
        load_preference_dataset(source)
    message = str(info.value)
    assert "'rejected'" in message and "rename_column" in message and "\n" not in message


def test_unsupported_file_and_missing_path(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(PreferenceDataError, match=r"\.jsonl"):
        load_preference_dataset(tmp_path / "x.txt")


def test_bad_rows_are_dropped_counted_and_reported(tokenizer, text_rows):
    long_prompt = "write " * 40 + ":"
    rows = [
        *text_rows[:5],
        {"prompt": "write two words :", "chosen": "   ", "rejected": " cat"},  # empty completion
        {"prompt": "write two words :", "chosen": " cat", "rejected": ""},  # empty completion
        {"prompt": "write two words :", "chosen": " cat dog", "rejected": " cat dog"},  # identical
        {"prompt": long_prompt, "chosen": " cat", "rejected": " dog"},
    ]  # prompt too long
    pairs, report = tokenize_pairs(rows, tokenizer, PreferenceDataConfig(max_length=20))
    assert len(pairs) == 5 and report.total == 9 and report.kept == 5
    assert report.dropped == {"empty_completion": 2, "chosen_equals_rejected": 1, "prompt_too_long": 1}
    assert report.summary() == (
        "kept 5 of 9 rows; dropped 1 chosen equals rejected, 2 empty completion, 1 prompt too long"
    )


def test_max_prompt_length_drops_or_keeps_the_end(tokenizer, text_rows):
    rows = text_rows[:4]  # prompts are 10 tokens
    _, report = tokenize_pairs(rows, tokenizer, PreferenceDataConfig(max_prompt_length=6))
    assert report.dropped["prompt_too_long"] == 4
    pairs, report = tokenize_pairs(
        rows, tokenizer, PreferenceDataConfig(max_prompt_length=6, truncation_mode="keep_end")
    )
    assert report.kept == 4 and all(n == 6 for n in pairs.chosen_prompt_lengths)
    full_prompt = tokenizer(rows[0]["prompt"])["input_ids"]
    assert pairs.chosen_ids[0][:6] == full_prompt[-6:]


def test_truncation_keep_start_cuts_completion(tokenizer, text_rows):
    pairs, _ = tokenize_pairs(text_rows, tokenizer, PreferenceDataConfig(max_length=12))
    assert max(map(len, pairs.chosen_ids + pairs.rejected_ids)) <= 12
    assert all(n == 10 for n in pairs.chosen_prompt_lengths)


def test_text_completions_end_with_eos(tokenizer, text_rows):
    pairs, _ = tokenize_pairs(text_rows[:3], tokenizer, PreferenceDataConfig(max_length=None))
    assert all(ids[-1] == tokenizer.eos_token_id for ids in pairs.chosen_ids + pairs.rejected_ids)


def test_implicit_prompt_is_split_off(tokenizer):
    prompt, chosen, rejected = split_implicit_prompt("write two words : cat dog", "write two words : red fox")
    assert (prompt, chosen, rejected) == ("write two words :", " cat dog", " red fox")
    messages = [{"role": "user", "content": "hi"}]
    prompt, chosen, rejected = split_implicit_prompt(
        [*messages, {"role": "assistant", "content": "a"}], [*messages, {"role": "assistant", "content": "b"}]
    )
    assert prompt == messages and chosen[0]["content"] == "a"
    pairs, report = tokenize_pairs(
        [{"chosen": "write two words : cat dog", "rejected": "write two words : red"}], tokenizer
    )
    assert report.kept == 1 and pairs.chosen_prompt_lengths[0] == 4


def test_conversational_rows_use_the_chat_template(tokenizer, chat_rows):
    pairs, report = tokenize_pairs(chat_rows[:2], tokenizer)
    assert report.kept == 2
    text = tokenizer.decode(pairs.chosen_ids[0])
    assert text.startswith("<user> write") and "<assistant>" in text and text.endswith("<eos>")


def test_collate_pads_to_the_batch_not_a_global_maximum(tokenizer, text_rows):
    pairs, _ = tokenize_pairs(text_rows, tokenizer)
    batch = collate_pairs(pairs, [0, 1], pad_token_id=tokenizer.pad_token_id)
    lengths = [len(pairs.chosen_ids[i]) for i in (0, 1)] + [len(pairs.rejected_ids[i]) for i in (0, 1)]
    assert batch.input_ids.shape == (4, max(lengths))
    assert batch.attention_mask.sum(1).tolist() == lengths
    completion = [n - 10 for n in lengths]
    assert batch.completion_mask.sum(1).tolist() == completion
    assert (batch.completion_mask <= batch.attention_mask).all()
    assert (batch.completion_mask[:, :10] == 0).all()


# ---------------------------------------------------------------------------------------------------
# Prompt sets (self-play, win rates)

CHAT = [{"role": "system", "content": "using tools"}, {"role": "user", "content": "write two words about animals"}]


def test_unique_prompts_dedupe_conversations_and_keep_the_prompt_turns():
    from hybridrl.preference.prompts import prompts_digest, unique_prompts

    reordered = [{"content": m["content"], "role": m["role"]} for m in CHAT]  # same messages, keys reordered
    dialogue = [*CHAT, {"role": "assistant", "content": "cat dog"}]  # a whole dialogue: its answer goes
    rows = [{"prompt": CHAT}, {"prompt": "write :"}, {"prompt": reordered}, {"prompt": dialogue}, {"prompt": "write :"}]
    assert unique_prompts(rows) == [CHAT, "write :"]
    assert unique_prompts([{"messages": CHAT}]) == [CHAT]  # no 'prompt' column: 'messages'
    with pytest.raises(PreferenceDataError, match="no 'question' field"):
        unique_prompts(rows, "question")
    with pytest.raises(PreferenceDataError, match="row 1, field 'prompt': a prompt must be text or a list of"):
        unique_prompts([{"prompt": [{"text": "hi"}]}])
    # a list of text keeps the digest runs were recorded with before conversations were accepted
    import hashlib

    assert prompts_digest(["a", "b"]) == hashlib.sha256(b"a\nb").hexdigest() != prompts_digest([CHAT])


def test_encode_prompts_renders_conversations_with_the_generation_prompt(tokenizer):
    from hybridrl.preference.models import CHAT_TEMPLATE
    from hybridrl.preference.prompts import encode_prompts

    assert tokenizer.chat_template == CHAT_TEMPLATE
    text = "write two words about animals and tools using saw :"
    ids = encode_prompts(tokenizer, [CHAT, text])
    assert ids[1] == tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids[0]) == "<system> using tools <user> write two words about animals <assistant>"
    no_template = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    no_template.chat_template = None
    with pytest.raises(PreferenceDataError, match="has no chat template"):
        encode_prompts(no_template, [CHAT])


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "dir"])
def test_load_prompts_from_files_and_dataset_directories(tmp_path, kind):
    from datasets import Dataset, DatasetDict

    from hybridrl.preference.prompts import load_prompts

    rows = [{"messages": CHAT, "id": 0}, {"messages": CHAT, "id": 1}, {"messages": CHAT[1:], "id": 2}]
    split = "train"
    if kind == "jsonl":
        source = write_jsonl(tmp_path / "p.jsonl", rows)
    elif kind == "parquet":
        source = tmp_path / "p.parquet"
        Dataset.from_list(rows).to_parquet(str(source))
    else:
        source, split = tmp_path / "d", "test"
        DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(source))
    assert load_prompts(source, split=split) == [CHAT, CHAT[1:]]
    with pytest.raises(PreferenceDataError, match="'question'"):
        load_prompts(source, split=split, field="question")
    if kind == "dir":
        with pytest.raises(PreferenceDataError, match="no split 'train': choose one of test with --prompts-split"):
            load_prompts(source)


def test_load_prompts_bad_sources_are_one_line(tmp_path):
    from hybridrl.preference.prompts import load_prompts

    with pytest.raises(PreferenceDataError, match=r"nope.jsonl does not exist; pass a .json, .jsonl, .parquet"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(PreferenceDataError, match=r"empty\.jsonl is empty"):
        load_prompts(tmp_path / "empty.jsonl")
    write_jsonl(tmp_path / "q.jsonl", [{"question": "hi"}])
    with pytest.raises(PreferenceDataError, match=r"no 'prompt' field \(fields: question\): name the prompt column"):
        load_prompts(tmp_path / "q.jsonl")
    assert load_prompts(tmp_path / "q.jsonl", field="question") == ["hi"]
