"""Preference data: load ``prompt``/``chosen``/``rejected`` datasets, tokenize once, batch without waste.

Formats (the Hugging Face / TRL conventions):
- standard: ``{"prompt": str, "chosen": str, "rejected": str}``; EOS is appended to each completion;
- conversational: each column is a list of ``{"role", "content"}`` messages; the tokenizer's chat
  template renders them (the prompt with the generation prompt);
- implicit prompt: only ``chosen``/``rejected``; the prompt is their common prefix (messages or text).

Tokenization follows TRL 1.16 ``DPOTrainer`` exactly (prompt and prompt+completion are tokenized
separately; the completion starts where the two token lists diverge), so the token ids, and hence the
losses, are the same. Truncation happens once here instead of in every batch.

Rows that cannot train are dropped, counted by reason and reported (:class:`DropReport`): an empty
completion, chosen identical to rejected (zero gradient), a prompt longer than the limits. A missing
column is an error, with one line saying which and how to fix it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class PreferenceDataError(ValueError):
    """A dataset that cannot be used at all (as opposed to single bad rows, which are dropped)."""


@dataclass(frozen=True, kw_only=True)
class PreferenceDataConfig:
    """How rows become token sequences."""

    max_length: int | None = 1024
    """Longest prompt+completion in tokens (TRL ``DPOConfig.max_length`` default); None = no limit."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens (TRL < 1.0 had 512; TRL 1.x removed it, hence None)."""
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_start"
    """keep_start: cut sequences at the end and drop rows whose prompt fills the limit (TRL default);
    keep_end: cut sequences (and over-long prompts) at the start, never drop."""

    def __post_init__(self) -> None:
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise PreferenceDataError(
                f"unknown truncation_mode {self.truncation_mode!r}: use 'keep_start' or 'keep_end'"
            )
        for name in ("max_length", "max_prompt_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PreferenceDataError(f"{name} must be a positive number of tokens, got {value}")


@dataclass
class DropReport:
    """How many rows were read, kept and dropped (by reason)."""

    total: int = 0
    dropped: Counter = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return self.total - sum(self.dropped.values())

    def summary(self) -> str:
        if not self.dropped:
            return f"kept all {self.total} rows"
        reasons = ", ".join(
            f"{count} {reason.replace('_', ' ')}" for reason, count in sorted(self.dropped.items())
        )
        return f"kept {self.kept} of {self.total} rows; dropped {reasons}"


@dataclass
class TokenizedPairs:
    """Token ids of every kept pair, ready for :func:`collate_pairs`.

    Chosen and rejected are separate full sequences (prompt + completion) because ``keep_end``
    truncation can cut their prompts differently; ``*_prompt_lengths`` says where each completion starts.
    """

    chosen_ids: list[list[int]]
    chosen_prompt_lengths: list[int]
    rejected_ids: list[list[int]]
    rejected_prompt_lengths: list[int]

    def __len__(self) -> int:
        return len(self.chosen_ids)

    def num_tokens(self) -> int:
        return sum(map(len, self.chosen_ids)) + sum(map(len, self.rejected_ids))


def _batch_to(batch, device: torch.device):
    """A copy of a batch dataclass with every tensor field on ``device``."""
    return replace(batch, **{f.name: getattr(batch, f.name).to(device, non_blocking=True) for f in fields(batch)})


@dataclass(frozen=True)
class PairBatch:
    """One concatenated batch: rows ``[0, B)`` are prompt+chosen, rows ``[B, 2B)`` prompt+rejected."""

    input_ids: Tensor
    """``[2B, T]`` token ids, right-padded to the longest row of *this* batch."""
    attention_mask: Tensor
    """``[2B, T]`` 1 on real tokens."""
    completion_mask: Tensor
    """``[2B, T]`` 1 on completion tokens (the tokens whose log-prob is summed)."""
    indices: Tensor
    """``[B]`` dataset index of each pair (to look up cached reference log-probs)."""

    @property
    def num_pairs(self) -> int:
        return self.indices.numel()

    def num_tokens(self) -> int:
        """Non-padding tokens (prompt + completion, chosen + rejected), counted as TRL's ``num_tokens``."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> PairBatch:
        return _batch_to(self, device)


# ---------------------------------------------------------------------------------------------------
# Loading and validation


def load_preference_dataset(source: str | os.PathLike, *, split: str = "train") -> Dataset:
    """Load a dataset (JSON/JSONL/Parquet/CSV file, local directory or Hub id) and check its columns.

    A directory written by ``Dataset.save_to_disk`` is loaded with ``load_from_disk``; any other directory
    or a Hub id goes through ``datasets.load_dataset``.
    """
    import datasets

    path = Path(source)
    try:
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise PreferenceDataError(
                    f"cannot read {path.name}: use a .json, .jsonl, .parquet or .csv file"
                )
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                dataset = _pick_split(dataset, split, source)
        else:
            dataset = datasets.load_dataset(str(source), split=split)
    except PreferenceDataError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PreferenceDataError(f"cannot load dataset {str(source)!r}: {first_line}") from err
    check_columns(dataset.column_names)
    return dataset


def _pick_split(dataset_dict: Any, split: str, source: Any) -> Dataset:
    if split not in dataset_dict:
        raise PreferenceDataError(
            f"dataset {str(source)!r} has no split {split!r}: "
            f"choose one of {', '.join(dataset_dict)} with --split"
        )
    return dataset_dict[split]


def check_columns(columns: Sequence[str]) -> None:
    """Raise a one-line :class:`PreferenceDataError` naming a missing column and the fix."""
    present = set(columns)
    required = REQUIRED_COLUMNS if "prompt" in present else REQUIRED_COLUMNS[1:]  # implicit prompt is fine
    for name in required:
        if name not in present:
            raise PreferenceDataError(
                f"dataset has no {name!r} column (columns: {', '.join(columns) or 'none'}); a preference "
                f"dataset needs prompt/chosen/rejected: rename yours, e.g. "
                f"dataset.rename_column('<old name>', '{name}')"
            )


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value
    )


def split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Split a prompt shared by ``chosen`` and ``rejected`` off their front (messages or text)."""
    if _is_conversation(chosen) and _is_conversation(rejected):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        return chosen[:shared], chosen[shared:], rejected[shared:]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared > 0 and chosen[shared - 1] == " ":
        shared -= 1  # a completion keeps its leading space, as when the prompt is explicit
    return chosen[:shared], chosen[shared:], rejected[shared:]


# ---------------------------------------------------------------------------------------------------
# Tokenization


def _is_empty(completion: Any) -> bool:
    if isinstance(completion, str):
        return not completion.strip()
    return not completion or all(not str(m.get("content") or "").strip() for m in completion)


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _tokenize_row(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, chosen: Any, rejected: Any
) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen completion ids, rejected completion ids), split where TRL splits them."""
    if _is_conversation(prompt):

        def encode(messages: list, generation_prompt: bool = False) -> list[int]:
            out = tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
            )
            return list(out["input_ids"])

        prompt_ids = encode(prompt, generation_prompt=True)
        full_chosen, full_rejected = encode(prompt + chosen), encode(prompt + rejected)
    else:
        eos = tokenizer.eos_token or ""
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
        encoded = tokenizer([prompt, prompt + chosen, prompt + rejected])["input_ids"]
        prompt_ids, full_chosen, full_rejected = (list(ids) for ids in encoded)
    # Chat templates or merges across the boundary can make the prompt alone tokenize differently
    # from its start inside prompt+completion; the completion starts where they diverge.
    start = min(
        _common_prefix_length(prompt_ids, full_chosen), _common_prefix_length(prompt_ids, full_rejected)
    )
    return prompt_ids[:start], full_chosen[start:], full_rejected[start:]


def _truncate(
    prompt: list[int], completion: list[int], config: PreferenceDataConfig
) -> tuple[list[int], int]:
    """Full sequence and prompt length after cutting to ``max_length`` the way TRL's collator does."""
    sequence = prompt + completion
    prompt_length = len(prompt)
    if config.max_length is not None and len(sequence) > config.max_length:
        if config.truncation_mode == "keep_start":
            sequence = sequence[: config.max_length]
        else:
            cut = len(sequence) - config.max_length
            sequence = sequence[cut:]
            prompt_length = max(prompt_length - cut, 0)
    return sequence, prompt_length


def tokenize_pairs(
    dataset: Dataset | Sequence[dict],
    tokenizer: PreTrainedTokenizerBase,
    config: PreferenceDataConfig | None = None,
) -> tuple[TokenizedPairs, DropReport]:
    """Tokenize every row once; drop and count the rows that cannot train.

    Raises:
        PreferenceDataError: a required column is missing.
    """
    config = config or PreferenceDataConfig()
    columns = (
        dataset.column_names
        if hasattr(dataset, "column_names")
        else (list(dataset[0]) if len(dataset) else [])
    )
    check_columns(columns)
    report = DropReport()
    pairs = TokenizedPairs([], [], [], [])
    for row in dataset:
        report.total += 1
        chosen, rejected = row.get("chosen"), row.get("rejected")
        prompt = row.get("prompt")
        if not isinstance(chosen, (str, list)) or not isinstance(rejected, (str, list)):
            report.dropped["missing_completion"] += 1
            continue
        if prompt is None:
            prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
        if _is_empty(chosen) or _is_empty(rejected):
            report.dropped["empty_completion"] += 1
            continue
        if chosen == rejected:
            report.dropped["chosen_equals_rejected"] += 1
            continue
        if _is_conversation(prompt) != _is_conversation(chosen) or _is_conversation(
            chosen
        ) != _is_conversation(rejected):
            report.dropped["mixed_text_and_messages"] += 1
            continue
        prompt_ids, chosen_ids, rejected_ids = _tokenize_row(tokenizer, prompt, chosen, rejected)
        if config.max_prompt_length is not None and len(prompt_ids) > config.max_prompt_length:
            if config.truncation_mode == "keep_start":
                report.dropped["prompt_too_long"] += 1
                continue
            prompt_ids = prompt_ids[-config.max_prompt_length :]
        if (
            config.truncation_mode == "keep_start"
            and config.max_length is not None
            and len(prompt_ids) >= config.max_length
        ):
            report.dropped["prompt_too_long"] += 1  # no room left for a single completion token
            continue
        chosen_seq, chosen_start = _truncate(prompt_ids, chosen_ids, config)
        rejected_seq, rejected_start = _truncate(prompt_ids, rejected_ids, config)
        pairs.chosen_ids.append(chosen_seq)
        pairs.chosen_prompt_lengths.append(chosen_start)
        pairs.rejected_ids.append(rejected_seq)
        pairs.rejected_prompt_lengths.append(rejected_start)
    return pairs, report


# ---------------------------------------------------------------------------------------------------
# Batching


def collate_pairs(pairs: TokenizedPairs, indices: Sequence[int] | Tensor, *, pad_token_id: int) -> PairBatch:
    """Concatenate chosen and rejected of ``indices`` into one right-padded ``[2B, T]`` batch.

    ``T`` is the longest sequence of this batch, never a global maximum.
    """
    index_list = [int(i) for i in indices]
    sequences = [pairs.chosen_ids[i] for i in index_list] + [pairs.rejected_ids[i] for i in index_list]
    starts = [pairs.chosen_prompt_lengths[i] for i in index_list] + [
        pairs.rejected_prompt_lengths[i] for i in index_list
    ]
    lengths = torch.tensor([len(s) for s in sequences])
    width = int(lengths.max())
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    positions = torch.arange(width)
    attention_mask = (positions < lengths[:, None]).long()
    completion_mask = attention_mask * (positions >= torch.tensor(starts)[:, None]).long()
    return PairBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        indices=torch.tensor(index_list, dtype=torch.long),
    )


@dataclass(frozen=True)
class SharedPromptBatch:
    """A pair batch whose prompt is stored once: ``B`` left-padded prompts, ``2B`` right-padded completions.

    Rows ``[0, B)`` of the completions are the chosen answers, ``[B, 2B)`` the rejected ones.
    """

    prompt_ids: Tensor
    """``[B, P]`` prompt tokens, left-padded (so every prompt ends at the last column)."""
    prompt_mask: Tensor
    """``[B, P]`` 1 on real prompt tokens."""
    completion_ids: Tensor
    """``[2B, C]`` completion tokens, right-padded."""
    completion_mask: Tensor
    """``[2B, C]`` 1 on real completion tokens."""
    indices: Tensor
    """``[B]`` dataset index of each pair."""

    @property
    def num_pairs(self) -> int:
        return self.indices.numel()

    def num_tokens(self) -> int:
        """Tokens of the equivalent concatenated batch (prompt counted twice), as TRL counts them."""
        return int(2 * self.prompt_mask.sum() + self.completion_mask.sum())

    def to(self, device: torch.device) -> SharedPromptBatch:
        return _batch_to(self, device)


def shares_prompts(pairs: TokenizedPairs, indices: Sequence[int]) -> bool:
    """Whether chosen and rejected start with the same non-empty prompt in every pair of ``indices``."""
    for i in indices:
        length = pairs.chosen_prompt_lengths[i]
        if (
            length == 0
            or length != pairs.rejected_prompt_lengths[i]
            or pairs.chosen_ids[i][:length] != pairs.rejected_ids[i][:length]
        ):
            return False
    return True


def collate_shared_prompt(
    pairs: TokenizedPairs, indices: Sequence[int] | Tensor, *, pad_token_id: int
) -> SharedPromptBatch:
    """Batch ``indices`` with each prompt once (see :func:`shares_prompts` for when this is valid)."""
    index_list = [int(i) for i in indices]
    prompts = [torch.tensor(pairs.chosen_ids[i][: pairs.chosen_prompt_lengths[i]]) for i in index_list]
    completions = [
        torch.tensor(pairs.chosen_ids[i][pairs.chosen_prompt_lengths[i] :]) for i in index_list
    ] + [torch.tensor(pairs.rejected_ids[i][pairs.rejected_prompt_lengths[i] :]) for i in index_list]
    pad = torch.nn.utils.rnn.pad_sequence
    prompt_ids = pad(prompts, batch_first=True, padding_value=pad_token_id, padding_side="left")
    prompt_mask = pad([torch.ones_like(p) for p in prompts], batch_first=True, padding_side="left")
    completion_ids = pad(completions, batch_first=True, padding_value=pad_token_id)
    completion_mask = pad([torch.ones_like(c) for c in completions], batch_first=True)
    return SharedPromptBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        indices=torch.tensor(index_list, dtype=torch.long),
    )


PROMPT, CHOSEN, REJECTED = 0, 1, 2
"""Values of :attr:`PackedPairBatch.branch`: which part of its pair a packed token belongs to."""


@dataclass(frozen=True)
class PackedPairBatch:
    """Whole pairs packed side by side into a few rows, each laid out prompt, chosen, rejected.

    Nothing is padded but the tail of a row, and each prompt is stored once. A token attends to the
    earlier tokens of its own pair's prompt and of its own answer only (the mask is built from
    ``segment`` and ``branch``), and its position id is the one it has in its own prompt+answer
    sequence, so every log-prob equals the one of the concatenated batch.
    """

    input_ids: Tensor
    """``[R, L]`` token ids of the packed rows (padding only at the end of a row)."""
    position_ids: Tensor
    """``[R, L]`` position of each token in its own prompt+answer sequence."""
    segment: Tensor
    """``[R, L]`` the pair (its slot in ``indices``) each token belongs to; -1 on padding."""
    branch: Tensor
    """``[R, L]`` PROMPT, CHOSEN or REJECTED; -1 on padding."""
    pred_index: Tensor
    """``[N]`` flat index ``row * L + column`` of the position whose logits predict each completion token."""
    target_ids: Tensor
    """``[N]`` the completion tokens, chosen and rejected of every pair."""
    owner: Tensor
    """``[N]`` the sequence each completion token belongs to: slot ``i`` chosen, ``B + i`` rejected."""
    indices: Tensor
    """``[B]`` dataset index of each pair."""

    @property
    def num_pairs(self) -> int:
        return self.indices.numel()

    def num_tokens(self) -> int:
        """Tokens of the equivalent concatenated batch (prompt counted twice), as TRL counts them."""
        return int(2 * (self.branch == PROMPT).sum() + (self.branch > PROMPT).sum())

    def to(self, device: torch.device) -> PackedPairBatch:
        return _batch_to(self, device)


def collate_packed(
    pairs: TokenizedPairs, indices: Sequence[int] | Tensor, *, pad_token_id: int, row_length: int | None = None
) -> PackedPairBatch:
    """Pack the pairs of ``indices`` (which must share their prompts) into rows of at most ``row_length``.

    ``row_length`` (default: the longest pair) is raised to the longest pair if shorter. Pairs go into
    rows first-fit by decreasing length, which leaves little room at the row ends; attention costs
    grow with the row length, so rows are kept about as long as the longest pair.
    """
    index_list = [int(i) for i in indices]
    num_pairs = len(index_list)
    pieces = []
    for i in index_list:
        start = pairs.chosen_prompt_lengths[i]
        pieces.append(
            (pairs.chosen_ids[i][:start], pairs.chosen_ids[i][start:], pairs.rejected_ids[i][start:])
        )
    sizes = [sum(map(len, piece)) for piece in pieces]
    capacity = max(max(sizes), row_length or 0)
    rows: list[list[int]] = []
    room: list[int] = []
    for slot in sorted(range(num_pairs), key=lambda s: -sizes[s]):
        fits = next((r for r, free in enumerate(room) if sizes[slot] <= free), None)
        if fits is None:
            rows.append([slot])
            room.append(capacity - sizes[slot])
        else:
            rows[fits].append(slot)
            room[fits] -= sizes[slot]
    width = capacity - min(room)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    branch = torch.full((len(rows), width), -1, dtype=torch.long)
    pred_index: list[int] = []
    target_ids: list[int] = []
    owner: list[int] = []
    for r, slots in enumerate(rows):
        column = 0
        for slot in slots:
            prompt, chosen, rejected = pieces[slot]
            parts = ((PROMPT, prompt, None), (CHOSEN, chosen, slot), (REJECTED, rejected, num_pairs + slot))
            prompt_last = r * width + column + len(prompt) - 1
            for part, tokens, sequence in parts:
                end = column + len(tokens)
                input_ids[r, column:end] = torch.tensor(tokens, dtype=torch.long)
                offset = 0 if part == PROMPT else len(prompt)
                position_ids[r, column:end] = torch.arange(offset, offset + len(tokens))
                segment[r, column:end] = slot
                branch[r, column:end] = part
                if sequence is not None:
                    # the prompt's last position predicts the first answer token, each token the next
                    pred_index += [prompt_last, *range(r * width + column, r * width + end - 1)]
                    target_ids += tokens
                    owner += [sequence] * len(tokens)
                column = end
    return PackedPairBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        segment=segment,
        branch=branch,
        pred_index=torch.tensor(pred_index, dtype=torch.long),
        target_ids=torch.tensor(target_ids, dtype=torch.long),
        owner=torch.tensor(owner, dtype=torch.long),
        indices=torch.tensor(index_list, dtype=torch.long),
    )
