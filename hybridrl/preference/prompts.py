"""Prompt sets for self-play and win rates: load them, deduplicate them, and encode them for a policy.

A prompt is text, or a conversation: a list of ``{"role", "content"}`` messages (TRL's conversational
format). The policy reads a conversation through its tokenizer's chat template with the assistant's
generation prompt after it (:func:`hybridrl.preference.data.chat_template_ids`, the helper the pairwise
data uses too) and text as it is; a judge is given the prompt as it was loaded, messages or text.

Sources (:func:`load_prompts`): a ``.jsonl`` / ``.json`` file (read here, so that a broken line is named),
a ``.parquet`` / ``.csv`` file, a dataset directory, or a Hugging Face dataset id, with a split and the
column that holds the prompts (``prompt``; when a dataset has none, ``messages``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridrl.preference.data import (
    PreferenceDataError,
    chat_template_ids,
    is_conversation,
    load_dataset_source,
    read_json_rows,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Prompt = str | list[dict[str, str]]
"""Text, or a conversation (messages) that the policy answers as the assistant."""

PROMPT_FIELDS = ("prompt", "messages")
"""Columns tried, in order, when no prompt field is named."""


def prompt_key(prompt: Prompt) -> str:
    """A canonical text form of a prompt: the text itself, or the messages as JSON with sorted keys."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def as_prompt(value: Any, where: str) -> Prompt:
    """``value`` as a prompt, or a one-line error naming ``where`` it came from.

    A conversation keeps its messages up to its last non-assistant one: a ``messages`` column often holds
    whole dialogues, and the policy is to write the assistant's turn itself.
    """
    if isinstance(value, str):
        return value
    if is_conversation(value):
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if messages:
            return messages
        raise PreferenceDataError(f"{where}: the conversation has no message before the assistant's answer")
    if value is None:
        raise PreferenceDataError(f"{where}: no prompt")
    kind = "a list that is not {role, content} messages" if isinstance(value, list) else type(value).__name__
    raise PreferenceDataError(f"{where}: a prompt must be text or a list of {{role, content}} messages, got {kind}")


def unique_prompts(rows: Sequence[Mapping[str, Any]], field: str | None = None) -> list[Prompt]:
    """The distinct prompts of ``rows`` (their ``field``; by default ``prompt``, else ``messages``), in
    first-seen order; conversations are compared by their canonical JSON."""
    columns = list(rows[0]) if rows else []
    field = field or next((name for name in PROMPT_FIELDS if name in columns), PROMPT_FIELDS[0])
    if rows and field not in columns:
        raise PreferenceDataError(
            f"prompt rows have no {field!r} field (fields: {', '.join(map(str, columns)) or 'none'}): "
            "name the prompt column with --prompt-field, e.g. the task's test_prompts.jsonl has 'prompt'"
        )
    unique: dict[str, Prompt] = {}
    for number, row in enumerate(rows, 1):
        prompt = as_prompt(row.get(field), f"row {number}, field {field!r}")
        unique.setdefault(prompt_key(prompt), prompt)
    return list(unique.values())


def load_prompts(
    source: str | os.PathLike, *, split: str = "train", field: str | None = None, split_option: str = "--prompts-split"
) -> list[Prompt]:
    """The distinct prompts of a file, dataset directory or Hub dataset (see the module docstring);
    ``split_option`` is the command-line option that picks the split, named when the split is missing.

    Raises:
        PreferenceDataError: one line naming the source and the fix (missing, unreadable, no such
            column, no prompts).
    """
    path = Path(source)
    rows: Sequence[Mapping[str, Any]]
    if path.is_file() and path.suffix.lower() in (".json", ".jsonl"):
        rows = read_json_rows(path)  # names the line of a broken file; no dataset cache needed
    else:
        dataset = load_dataset_source(source, split=split, split_option=split_option)
        wanted = field or next((name for name in PROMPT_FIELDS if name in dataset.column_names), PROMPT_FIELDS[0])
        if wanted not in dataset.column_names:
            raise PreferenceDataError(
                f"dataset {str(source)!r} has no {wanted!r} column (columns: "
                f"{', '.join(dataset.column_names) or 'none'}): name the prompt column with --prompt-field"
            )
        rows = [{wanted: value} for value in dataset[wanted]]
        field = wanted
    try:
        prompts = unique_prompts(rows, field)
    except PreferenceDataError as err:
        raise PreferenceDataError(f"{source}: {err}") from None
    if not prompts:
        raise PreferenceDataError(f"{source} holds no prompts")
    return prompts


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Iterable[Prompt]) -> list[list[int]]:
    """The policy's input ids of each prompt: text as tokenized, messages through the chat template with the
    generation prompt (the assistant's turn starts where the ids end)."""
    prompts = list(prompts)
    texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    ids: list[list[int]] = [[] for _ in prompts]
    if texts:  # one batched call for the text prompts
        for i, row in zip(texts, tokenizer([prompts[i] for i in texts])["input_ids"], strict=True):
            ids[i] = list(row)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            ids[i] = chat_template_ids(tokenizer, prompt, generation_prompt=True)
    return ids


def prompts_digest(prompts: Sequence[Prompt]) -> str:
    """SHA-256 of a prompt list, part of a self-play run's record (a list of text keeps its former digest,
    so that runs made before conversations were accepted still resume)."""
    if all(isinstance(p, str) for p in prompts):
        payload = "\n".join(prompts)  # type: ignore[arg-type]
    else:
        payload = json.dumps([prompt_key(p) for p in prompts])
    return hashlib.sha256(payload.encode()).hexdigest()
