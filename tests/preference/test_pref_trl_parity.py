"""Acceptance 1: per-batch loss and implicit rewards equal TRL's DPOTrainer to 1e-5 (same model and data).

The policy and the reference are two different tiny Llamas, so the log-ratios are far from zero and
the check is not the trivial log 2 of step 0.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")

from hybridrl.preference.data import PreferenceDataConfig, tokenize_pairs  # noqa: E402
from hybridrl.preference.losses import PreferenceLossConfig  # noqa: E402
from hybridrl.preference.models import load_causal_lm, load_tokenizer  # noqa: E402
from hybridrl.preference.trainer import PairwiseTrainer, TrainConfig  # noqa: E402

CASES = [
    ("sigmoid", "reverse_kl", 0.5),
    ("sigmoid", "forward_kl", 0.5),
    ("sigmoid", "js_divergence", 0.5),
    ("sigmoid", "alpha_divergence", 0.3),
    ("ipo", "reverse_kl", 0.5),
    ("ipo", "forward_kl", 0.5),
]
BATCHES = [[0, 1, 2, 3], [7], [5, 11, 17, 23, 4, 9]]
REWARD_KEYS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
MAX_LENGTH = 18  # short enough that some sequences are truncated


def _trl_trainer(policy_dir, reference_dir, rows, tmp_path, loss_type, divergence, alpha):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=0.3,
        loss_type=[loss_type],
        f_divergence_type=divergence,
        f_alpha_divergence_coef=alpha,
        max_length=MAX_LENGTH,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=4,
        dataset_num_proc=None,
    )
    return DPOTrainer(
        model=str(policy_dir),
        ref_model=load_causal_lm(reference_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(policy_dir),
    )


def _ours(policy_dir, reference_dir, rows, tmp_path, loss_type, divergence, alpha):
    tokenizer = load_tokenizer(policy_dir)
    pairs, report = tokenize_pairs(rows, tokenizer, PreferenceDataConfig(max_length=MAX_LENGTH))
    assert report.kept == len(rows)
    trainer = PairwiseTrainer(
        model=load_causal_lm(policy_dir),
        ref_model=load_causal_lm(reference_dir),
        tokenizer=tokenizer,
        pairs=pairs,
        loss_config=PreferenceLossConfig(beta=0.3, loss_type=loss_type, divergence=divergence, alpha=alpha),
        train_config=TrainConfig(device="cpu", progress=False),
        out_dir=tmp_path / "ours",
    )
    trainer.prepare_reference()
    return trainer, pairs


@pytest.mark.parametrize("fmt", ["text", "chat"])
def test_tokenization_matches_trl(tiny_lm, text_rows, chat_rows, tmp_path, fmt):
    rows = text_rows if fmt == "text" else chat_rows
    theirs = _trl_trainer(*tiny_lm, rows, tmp_path, "sigmoid", "reverse_kl", 0.5)
    _, pairs = _ours(*tiny_lm, rows, tmp_path, "sigmoid", "reverse_kl", 0.5)
    for i, example in enumerate(theirs.train_dataset):
        chosen = (example["prompt_ids"] + example["chosen_ids"])[:MAX_LENGTH]
        rejected = (example["prompt_ids"] + example["rejected_ids"])[:MAX_LENGTH]
        assert pairs.chosen_ids[i] == chosen and pairs.rejected_ids[i] == rejected
        assert pairs.chosen_prompt_lengths[i] == len(example["prompt_ids"])


@pytest.mark.parametrize(("loss_type", "divergence", "alpha"), CASES)
def test_loss_and_rewards_match_trl(tiny_lm, text_rows, tmp_path, loss_type, divergence, alpha):
    theirs = _trl_trainer(*tiny_lm, text_rows, tmp_path, loss_type, divergence, alpha)
    ours, pairs = _ours(*tiny_lm, text_rows, tmp_path, loss_type, divergence, alpha)
    from hybridrl.preference.layouts import collate_pairs

    for indices in BATCHES:
        trl_batch = theirs.data_collator([theirs.train_dataset[i] for i in indices])
        theirs.model.train()  # TRL files metrics under "train" only in training mode
        with torch.no_grad():
            trl_loss = theirs.compute_loss(theirs.model, trl_batch)
        trl_metrics = {k: v[-1] for k, v in theirs._metrics["train"].items()}
        concatenated = collate_pairs(pairs, indices, pad_token_id=ours.pad_token_id)
        assert torch.equal(concatenated.input_ids, trl_batch["input_ids"])
        # both layouts: the concatenated batch (TRL's own computation: to 1e-5) and the trainer's packed
        # one, whose attention sums in another order (to 1e-5 relative: IPO's losses are ~5, not ~0.7)
        for batch, scale in ((concatenated, None), (ours.collate(indices), float(trl_loss))):
            with torch.no_grad():
                loss, metrics = ours.compute_loss(batch)
            assert abs(float(loss) - float(trl_loss)) < 1e-5 * max(1.0, abs(scale or 1.0)), (
                type(batch).__name__,
                float(loss),
                float(trl_loss),
            )
            for key in REWARD_KEYS:
                tolerance = 1e-5 * max(1.0, abs(trl_metrics[key]) if scale else 1.0)
                assert abs(float(metrics[key]) - trl_metrics[key]) < tolerance, (
                    key,
                    float(metrics[key]),
                    trl_metrics[key],
                )
        assert abs(float(loss) - 0.6931) > 1e-2  # policy != reference: not the trivial value
