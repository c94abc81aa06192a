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

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
    """How many rows were read, kept and dropped (by reason), and what was kept but changed or repeated
    (``noted``: duplicate rows, pairs whose completions were cut to ``max_length``)."""

    total: int = 0
    dropped: Counter = field(default_factory=Counter)
    noted: Counter = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return self.total - sum(self.dropped.values())

    def summary(self) -> str:
        def counts(counter: Counter) -> str:
            return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(counter.items()))

        if not self.dropped:
            text = f"kept all {self.total} rows"
        else:
            text = f"kept {self.kept} of {self.total} rows; dropped {counts(self.dropped)}"
        return text + (f"; kept {counts(self.noted)}" if self.noted else "")


@dataclass
class TokenizedPairs:
    """Token ids of every kept pair, ready for a batch layout (:mod:`hybridrl.preference.layouts`).

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


# ---------------------------------------------------------------------------------------------------
# Loading and validation


def load_preference_dataset(source: str | os.PathLike, *, split: str = "train") -> Dataset:
    """Load a dataset (JSON/JSONL/Parquet/CSV file, local directory or Hub id) and check its columns."""
    dataset = load_dataset_source(source, split=split)
    check_columns(dataset.column_names)
    return dataset


def looks_like_a_path(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a local file or directory rather than a Hub id (which is never absolute,
    never starts with a dot and never ends in a data-file suffix)."""
    text = str(source)
    return (
        Path(text).suffix.lower() in FILE_BUILDERS
        or text.startswith((".", "~", os.sep))
        or Path(text).exists()
    )


def load_dataset_source(source: str | os.PathLike, *, split: str = "train", split_option: str = "--split") -> Dataset:
    """Load any dataset: a JSON/JSONL/Parquet/CSV file, a local directory or a Hub id (no column check).

    A directory written by ``Dataset.save_to_disk`` is loaded with ``load_from_disk``; any other directory
    or a Hub id goes through ``datasets.load_dataset``. A local path that does not exist is one line
    saying so, not a failed Hub lookup; ``split_option`` is the command-line option that picks the split.
    """
    import datasets

    path = Path(source)
    if looks_like_a_path(source) and not path.exists():
        raise PreferenceDataError(
            f"cannot load dataset {str(source)!r}: {path} does not exist; pass a .json, .jsonl, .parquet or "
            ".csv file, a dataset directory or a Hugging Face dataset id"
        )
    try:
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise PreferenceDataError(
                    f"cannot read {path.name}: use a .json, .jsonl, .parquet or .csv file"
                )
            if builder == "json":
                # datasets' own errors name neither the line nor the problem: read the file here first
                read_json_rows(path)
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                dataset = _pick_split(dataset, split, source, split_option)
        else:
            dataset = datasets.load_dataset(str(source), split=split)
    except PreferenceDataError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PreferenceDataError(f"cannot load dataset {str(source)!r}: {first_line}") from err
    return dataset


def read_json_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON Lines file, or of a .json file holding one list of objects.

    Raises a one-line :class:`PreferenceDataError` naming the file and the line for an empty file,
    bytes that are not UTF-8, a line that is not JSON (a torn last line included) or is not an object,
    and a prompt or completion that is neither text nor a list of messages (a number, say).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PreferenceDataError(f"cannot read {path}: {err.strerror or type(err).__name__}") from None
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise PreferenceDataError(f"{path}, line {number}: not UTF-8 text; save the file as UTF-8") from None
    text = raw.decode("utf-8")
    if not text.strip():
        raise PreferenceDataError(f"{path} is empty: a preference file needs one JSON object per line")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise PreferenceDataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
        where = [f"{path}, item {i + 1}" for i in range(len(rows))]
    elif path.suffix.lower() == ".json" and _one_object(text):
        rows, where = [json.loads(text)], [str(path)]
    else:
        rows, where = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                last = number == len(text.splitlines()) and not text.endswith("\n")
                torn = " (the file may be cut short)" if last and number > 1 else ""
                raise PreferenceDataError(
                    f"{path}, line {number}: not valid JSON{torn} ({err.msg}); each line must be one JSON object"
                ) from None
            where.append(f"{path}, line {number}")
    for place, row in zip(where, rows, strict=True):
        if not isinstance(row, dict):
            raise PreferenceDataError(f"{place}: a row must be a JSON object with prompt/chosen/rejected, "
                                      f"got {_json_kind(row)}")
        # a number where text belongs is a broken file, not a row to drop silently
        for name in REQUIRED_COLUMNS:
            value = row.get(name)
            if value is not None and not isinstance(value, (str, list)):
                raise PreferenceDataError(f"{place}: {name!r} is {_json_kind(value)}, not text or chat messages")
    if not rows:
        raise PreferenceDataError(f"{path} holds no rows")
    return rows


def _one_object(text: str) -> bool:
    """Whether ``text`` is a single JSON object (a .json file may hold one row spread over lines)."""
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else "text"


def _pick_split(dataset_dict: Any, split: str, source: Any, option: str = "--split") -> Dataset:
    if split not in dataset_dict:
        raise PreferenceDataError(
            f"dataset {str(source)!r} has no split {split!r}: "
            f"choose one of {', '.join(dataset_dict)} with {option}"
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


def is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value
    )


def split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Split a prompt shared by ``chosen`` and ``rejected`` off their front (messages or text)."""
    if is_conversation(chosen) and is_conversation(rejected):
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


def chat_template_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], *, generation_prompt: bool = False
) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template (with the assistant's generation
    prompt after them when ``generation_prompt``); one line saying so when the tokenizer has no template."""
    if not getattr(tokenizer, "chat_template", None):
        raise PreferenceDataError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', '') or 'this model'} has no chat template, "
            "so conversational (messages) data cannot be rendered: use a chat model, or text prompts"
        )
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
    )
    return list(out["input_ids"])


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
    if is_conversation(prompt):
        prompt_ids = chat_template_ids(tokenizer, prompt, generation_prompt=True)
        full_chosen = chat_template_ids(tokenizer, prompt + chosen)
        full_rejected = chat_template_ids(tokenizer, prompt + rejected)
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
    seen: set[str] = set()
    for row in dataset:
        report.total += 1
        key = json.dumps([row.get(name) for name in REQUIRED_COLUMNS], sort_keys=True, default=str)
        if key in seen:
            report.noted["duplicate_rows"] += 1  # kept: repeating a pair is a weighting the data chose
        seen.add(key)
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
        if is_conversation(prompt) != is_conversation(chosen) or is_conversation(
            chosen
        ) != is_conversation(rejected):
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
        if len(chosen_seq) < len(prompt_ids) + len(chosen_ids) or (
            len(rejected_seq) < len(prompt_ids) + len(rejected_ids)
        ):
            report.noted["pairs_cut_to_max_length"] += 1
        pairs.chosen_ids.append(chosen_seq)
        pairs.chosen_prompt_lengths.append(chosen_start)
        pairs.rejected_ids.append(rejected_seq)
        pairs.rejected_prompt_lengths.append(rejected_start)
    return pairs, report
