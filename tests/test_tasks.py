"""Tasks against independent references: torch losses, NumPy perplexity and unigram baselines,
scikit-learn classification metrics, and the record checks and loaders built on a task's spec."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from jaxdl.data.pipeline import iterate_eval_batches, make_train_loader
from jaxdl.data.records import ArraySource, DataSplits
from jaxdl.errors import ConfigError, DataError
from jaxdl.models import get_model
from jaxdl.parallel import batch_sharding, make_mesh, shard_batch
from jaxdl.tasks import (
    EXAMPLE_MASK,
    ImageClassification,
    LanguageModeling,
    SequenceClassification,
    build_task,
)
from jaxdl.train import ShardedStep, make_train_step, sharded_state_initializer


class FakeModel:
    """A "model" returning fixed outputs; records the arguments of every call."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return jnp.asarray(self.outputs)


def _torch(array):
    return torch.from_numpy(np.array(array))


# --------------------------------------------------------------------------------------------
# Language modelling


def _lm_batch(rng, batch=4, seq_len=7, vocab=11, real_lengths=(8, 5, 8, 3)):
    """Token windows of seq_len+1 with loss_mask 1 on the first ``real_lengths[i]`` positions.

    Padding positions hold random ids (not pad_id) so that counting them changes every sum."""
    tokens = rng.integers(0, vocab, size=(batch, seq_len + 1)).astype(np.int32)
    loss_mask = (np.arange(seq_len + 1)[None, :] < np.asarray(real_lengths)[:, None]).astype(
        np.float32
    )
    logits = rng.normal(size=(batch, seq_len, vocab)).astype(np.float32) * 2.0
    return tokens, loss_mask, logits


def _reference_lm_nll(tokens, loss_mask, logits):
    """Per-position NLL of the shifted targets under torch, and the boolean target mask."""
    targets = tokens[:, 1:]
    nll = F.cross_entropy(
        _torch(logits).reshape(-1, logits.shape[-1]).double(),
        _torch(targets).reshape(-1).long(),
        reduction="none",
    ).reshape(targets.shape)
    return nll.numpy(), loss_mask[:, 1:] > 0


def test_lm_loss_equals_torch_cross_entropy_over_the_shifted_unmasked_targets():
    rng = np.random.default_rng(0)
    tokens, loss_mask, logits = _lm_batch(rng)
    task = LanguageModeling(seq_len=7)
    model = FakeModel(logits)
    loss, aux = task.loss(
        model, {"tokens": jnp.asarray(tokens), "loss_mask": jnp.asarray(loss_mask)}
    )

    # The model reads the inputs tokens[:, :-1] and nothing else.
    ((args, kwargs),) = model.calls
    assert len(args) == 1 and not kwargs
    np.testing.assert_array_equal(np.asarray(args[0]), tokens[:, :-1])

    targets = tokens[:, 1:]
    keep = loss_mask[:, 1:] > 0
    expected = F.cross_entropy(_torch(logits[keep]).double(), _torch(targets[keep]).long())
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # A wrong shift (unshifted targets, or the mask read without the shift) scores differently.
    unshifted = F.cross_entropy(_torch(logits[keep]).double(), _torch(tokens[:, :-1][keep]).long())
    unshifted_mask = loss_mask[:, :-1] > 0
    wrong_mask = F.cross_entropy(
        _torch(logits[unshifted_mask]).double(), _torch(targets[unshifted_mask]).long()
    )
    assert abs(float(unshifted) - float(expected)) > 1e-2
    assert abs(float(wrong_mask) - float(expected)) > 1e-2

    expected_accuracy = np.mean(logits.argmax(-1)[keep] == targets[keep])
    assert float(aux["accuracy"]) == pytest.approx(expected_accuracy, abs=1e-6)


def test_lm_loss_ignores_logits_and_targets_at_padded_positions():
    rng = np.random.default_rng(1)
    tokens, loss_mask, logits = _lm_batch(rng)
    task = LanguageModeling(seq_len=7)
    batch = {"tokens": jnp.asarray(tokens), "loss_mask": jnp.asarray(loss_mask)}
    loss, _ = task.loss(FakeModel(logits), batch)

    pad = loss_mask[:, 1:] == 0
    assert pad.any()
    other_logits = np.where(pad[..., None], rng.normal(size=logits.shape) * 5, logits)
    other_tokens = tokens.copy()
    other_tokens[:, 1:][pad] = (tokens[:, 1:][pad] + 1) % 11
    other = {"tokens": jnp.asarray(other_tokens), "loss_mask": jnp.asarray(loss_mask)}
    other_loss, _ = task.loss(FakeModel(other_logits.astype(np.float32)), other)
    assert float(other_loss) == pytest.approx(float(loss), rel=1e-6)


def _packed_lm_batch(rng, vocab=11):
    """Two rows of 8 (seq_len 7): row 0 packs sequences of 3 and 5, row 1 one of 6 + padding."""
    segment_ids = np.array([[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
    positions = np.array([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 0, 0]], np.int32)
    tokens = np.where(segment_ids > 0, rng.integers(1, vocab, size=segment_ids.shape), 0)
    logits = rng.normal(size=(2, 7, vocab)).astype(np.float32) * 2.0
    batch = {
        "tokens": tokens.astype(np.int32),
        "segment_ids": segment_ids,
        "positions": positions,
        "loss_mask": (segment_ids > 0).astype(np.float32),
    }
    return batch, logits


def test_packed_lm_passes_segments_and_positions_and_scores_only_within_a_sequence():
    batch, logits = _packed_lm_batch(np.random.default_rng(10))
    task = LanguageModeling(seq_len=7, packed=True)
    spec = task.batch_spec()
    assert set(spec) == {"tokens", "loss_mask", "segment_ids", "positions"}
    for name in ("segment_ids", "positions"):
        assert spec[name].dtype == np.int32 and spec[name].shape == (8,)
        assert spec[name].pad_value == 0
    model = FakeModel(logits)
    loss, _ = task.loss(model, {k: jnp.asarray(v) for k, v in batch.items()})

    ((args, kwargs),) = model.calls
    np.testing.assert_array_equal(np.asarray(args[0]), batch["tokens"][:, :-1])
    assert set(kwargs) == {"segment_ids", "positions"}
    for name in kwargs:
        np.testing.assert_array_equal(np.asarray(kwargs[name]), batch[name][:, :-1])

    # Targets: 2 + 4 in row 0 (not the first token of sequence 2), 5 in row 1 (not padding).
    keep = np.zeros((2, 7), bool)
    keep[0, [0, 1, 3, 4, 5, 6]] = True
    keep[1, :5] = True
    targets = batch["tokens"][:, 1:]
    expected = F.cross_entropy(_torch(logits[keep]).double(), _torch(targets[keep]).long())
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)

    sums = task.eval_sums(
        FakeModel(logits),
        {**{k: jnp.asarray(v) for k, v in batch.items()}, EXAMPLE_MASK: jnp.ones(2)},
    )
    assert float(sums["tokens"]) == keep.sum() == 11
    # The same rows read unpacked count the cross-sequence target too.
    unpacked = LanguageModeling(seq_len=7)
    assert unpacked.model_inputs(batch)[1] == {}
    unpacked_sums = unpacked.eval_sums(FakeModel(logits), {**batch, EXAMPLE_MASK: np.ones(2)})
    assert float(unpacked_sums["tokens"]) == 12


def test_lm_eval_sums_give_perplexity_unigram_baseline_and_token_count_over_batches():
    rng = np.random.default_rng(2)
    vocab, seq_len = 11, 7
    counts = rng.integers(0, 20, size=vocab)
    counts[3] = 0  # a never-seen token still gets add-one mass
    task = LanguageModeling(seq_len=seq_len, unigram_counts=counts)

    total_sums = None
    nll_total, unigram_total, correct, n_tokens = 0.0, 0.0, 0, 0
    unigram_log_p = np.log((counts + 1.0) / (counts.sum() + vocab))
    for example_mask in ([1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0]):
        tokens, loss_mask, logits = _lm_batch(rng, seq_len=seq_len, vocab=vocab)
        example_mask = np.asarray(example_mask, np.float32)
        batch = {
            "tokens": jnp.asarray(tokens),
            "loss_mask": jnp.asarray(loss_mask),
            EXAMPLE_MASK: jnp.asarray(example_mask),
        }
        sums = jax.device_get(task.eval_sums(FakeModel(logits), batch))
        total_sums = sums if total_sums is None else jax.tree.map(np.add, total_sums, sums)

        nll, keep = _reference_lm_nll(tokens, loss_mask, logits)
        keep = keep & (example_mask[:, None] > 0)
        targets = tokens[:, 1:]
        nll_total += nll[keep].sum()
        unigram_total += -unigram_log_p[targets[keep]].sum()
        correct += int((logits.argmax(-1)[keep] == targets[keep]).sum())
        n_tokens += int(keep.sum())

    results = task.summarize(total_sums)
    assert results["tokens"] == n_tokens
    assert results["loss"] == pytest.approx(nll_total / n_tokens, rel=1e-5)
    assert results["perplexity"] == pytest.approx(np.exp(nll_total / n_tokens), rel=1e-5)
    assert results["bits_per_token"] == pytest.approx(nll_total / n_tokens / np.log(2), rel=1e-5)
    assert results["accuracy"] == pytest.approx(correct / n_tokens, abs=1e-6)
    assert results["unigram_loss"] == pytest.approx(unigram_total / n_tokens, rel=1e-5)
    assert results["unigram_perplexity"] == pytest.approx(
        np.exp(unigram_total / n_tokens), rel=1e-5
    )
    assert results["perplexity_ratio_to_unigram"] == pytest.approx(
        np.exp((nll_total - unigram_total) / n_tokens), rel=1e-5
    )


def test_lm_eval_sums_without_unigram_counts_have_no_baseline():
    rng = np.random.default_rng(3)
    tokens, loss_mask, logits = _lm_batch(rng)
    task = LanguageModeling(seq_len=7)
    batch = {
        "tokens": jnp.asarray(tokens),
        "loss_mask": jnp.asarray(loss_mask),
        EXAMPLE_MASK: jnp.ones(4, jnp.float32),
    }
    results = task.summarize(jax.device_get(task.eval_sums(FakeModel(logits), batch)))
    assert "unigram_perplexity" not in results
    assert results["tokens"] == int((loss_mask[:, 1:] > 0).sum())


# --------------------------------------------------------------------------------------------
# Classification


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_image_classification_loss_equals_torch_cross_entropy(label_smoothing):
    rng = np.random.default_rng(4)
    images = rng.normal(size=(6, 4, 4, 1)).astype(np.float32)
    labels = rng.integers(0, 5, size=6).astype(np.int32)
    logits = (rng.normal(size=(6, 5)) * 3).astype(np.float32)
    task = ImageClassification(
        input_shape=(4, 4, 1), num_classes=5, label_smoothing=label_smoothing
    )
    model = FakeModel(logits)
    loss, aux = task.loss(model, {"inputs": jnp.asarray(images), "labels": jnp.asarray(labels)})

    ((args, kwargs),) = model.calls
    np.testing.assert_array_equal(np.asarray(args[0]), images)
    assert len(args) == 1 and not kwargs
    expected = F.cross_entropy(
        _torch(logits).double(), _torch(labels).long(), label_smoothing=label_smoothing
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(aux["accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_sequence_classification_passes_the_padding_mask_and_matches_torch():
    rng = np.random.default_rng(5)
    pad_id = 3
    tokens = rng.integers(4, 20, size=(4, 6)).astype(np.int32)
    for row, length in enumerate((6, 4, 1, 3)):
        tokens[row, length:] = pad_id
    labels = np.array([0, 2, 1, 2], np.int32)
    logits = (rng.normal(size=(4, 3)) * 2).astype(np.float32)
    task = SequenceClassification(max_len=6, num_classes=3, label_smoothing=0.1, pad_id=pad_id)
    model = FakeModel(logits)
    loss, _ = task.loss(model, {"tokens": jnp.asarray(tokens), "labels": jnp.asarray(labels)})

    ((args, kwargs),) = model.calls
    assert len(args) == 1 and set(kwargs) == {"padding_mask"}
    np.testing.assert_array_equal(np.asarray(args[0]), tokens)
    padding_mask = np.asarray(kwargs["padding_mask"])
    assert padding_mask.dtype == np.bool_
    np.testing.assert_array_equal(padding_mask, tokens != pad_id)
    assert padding_mask.sum(1).tolist() == [6, 4, 1, 3]
    expected = F.cross_entropy(_torch(logits).double(), _torch(labels).long(), label_smoothing=0.1)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)

    # predict and init_inputs call the model the same way.
    model.calls.clear()
    predictions = task.predict(model, {"tokens": jnp.asarray(tokens)})
    np.testing.assert_array_equal(np.asarray(predictions), logits.argmax(-1))
    np.testing.assert_array_equal(np.asarray(model.calls[0][1]["padding_mask"]), tokens != pad_id)
    args, kwargs = task.init_inputs(2)
    assert args[0].shape == (2, 6) and args[0].dtype == jnp.int32
    assert kwargs["padding_mask"].shape == (2, 6)


def _padded_classification_batches(rng, num_classes, task_kind):
    """Three batches of 8 with an example mask; padding rows hold garbage labels and logits."""
    batches = []
    for num_real in (8, 5, 2):
        labels = rng.integers(0, num_classes, size=8).astype(np.int32)
        logits = (rng.normal(size=(8, num_classes)) * 2).astype(np.float32)
        mask = (np.arange(8) < num_real).astype(np.float32)
        if task_kind == "image":
            batch = {"inputs": rng.normal(size=(8, 4, 4, 1)).astype(np.float32)}
        else:
            batch = {"tokens": rng.integers(1, 9, size=(8, 5)).astype(np.int32)}
        batch.update(labels=labels, mask=mask)
        batches.append((batch, logits))
    return batches


@pytest.mark.parametrize("task_kind", ["image", "sequence"])
def test_classification_eval_sums_and_summary_equal_sklearn(task_kind):
    rng = np.random.default_rng(6)
    num_classes = 4
    if task_kind == "image":
        task = ImageClassification(input_shape=(4, 4, 1), num_classes=num_classes)
    else:
        task = SequenceClassification(max_len=5, num_classes=num_classes)
    total = None
    all_labels, all_predictions, all_nll = [], [], []
    for batch, logits in _padded_classification_batches(rng, num_classes, task_kind):
        sums = jax.device_get(
            task.eval_sums(FakeModel(logits), {k: jnp.asarray(v) for k, v in batch.items()})
        )
        total = sums if total is None else jax.tree.map(np.add, total, sums)
        real = batch["mask"] > 0
        all_labels.append(batch["labels"][real])
        all_predictions.append(logits.argmax(-1)[real])
        all_nll.append(
            F.cross_entropy(
                _torch(logits[real]).double(),
                _torch(batch["labels"][real]).long(),
                reduction="none",
            ).numpy()
        )
    labels, predictions = np.concatenate(all_labels), np.concatenate(all_predictions)
    assert len(labels) == 15
    classes = list(range(num_classes))
    np.testing.assert_array_equal(
        total["confusion"], skm.confusion_matrix(labels, predictions, labels=classes)
    )
    assert float(total["count"]) == 15

    results = task.summarize(total)
    assert results["loss"] == pytest.approx(np.concatenate(all_nll).mean(), rel=1e-5)
    assert results["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
    for average in ("macro", "micro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            labels, predictions, labels=classes, average=average, zero_division=0
        )
        assert results[f"precision_{average}"] == pytest.approx(precision)
        assert results[f"recall_{average}"] == pytest.approx(recall)
        assert results[f"f1_{average}"] == pytest.approx(f1)


# --------------------------------------------------------------------------------------------
# Record checks


def test_check_record_accepts_good_records_and_rejects_bad_ones():
    task = LanguageModeling(seq_len=4)
    good = {"tokens": np.arange(5, dtype=np.int32), "loss_mask": np.ones(5, np.float32)}
    task.check_record(good, "train split")
    task.check_record({**good, "tokens": np.arange(5, dtype=np.int64), "extra": 1}, "train split")

    with pytest.raises(DataError, match="needs field 'loss_mask'"):
        task.check_record({"tokens": good["tokens"]}, "train split")
    with pytest.raises(DataError, match=r"shape \(4,\).*expects \(5,\)"):
        task.check_record({**good, "tokens": np.arange(4, dtype=np.int32)}, "val split")
    with pytest.raises(DataError, match="must hold integers"):
        task.check_record({**good, "tokens": np.arange(5, dtype=np.float32)}, "test split")

    classification = SequenceClassification(max_len=3, num_classes=2)
    classification.check_record({"tokens": np.ones(3, np.int32), "labels": np.int32(1)}, "x")
    with pytest.raises(DataError, match="must hold integers"):
        classification.check_record({"tokens": np.ones(3, np.int32), "labels": 1.0}, "x")
    with pytest.raises(DataError, match="needs field 'labels'"):
        classification.check_record({"tokens": np.ones(3, np.int32)}, "x")


def test_packed_lm_checks_packed_rows_and_accepts_documents_for_the_loader_to_pack():
    task = LanguageModeling(seq_len=4, packed=True)
    row = {
        "tokens": np.arange(5, dtype=np.int32),
        "loss_mask": np.ones(5, np.float32),
        "segment_ids": np.array([1, 1, 2, 2, 2], np.int32),
        "positions": np.array([0, 1, 0, 1, 2], np.int32),
    }
    task.check_record(row, "val split")
    task.check_record({"tokens": np.arange(11, dtype=np.int64)}, "train split")
    with pytest.raises(DataError, match=r"field 'positions' has shape \(4,\)"):
        task.check_record({**row, "positions": np.zeros(4, np.int32)}, "val split")
    with pytest.raises(DataError, match="1-D integer 'tokens'"):
        task.check_record({"tokens": np.ones(5, np.float32)}, "train split")
    # Unpacked tasks still need the full spec.
    with pytest.raises(DataError, match="needs field 'loss_mask'"):
        LanguageModeling(seq_len=4).check_record({"tokens": row["tokens"]}, "train split")


def _lm_splits(info):
    documents = ArraySource(tokens=np.arange(3 * 7, dtype=np.int32).reshape(3, 7))
    rows = ArraySource(
        tokens=np.ones((2, 5), np.int32),
        loss_mask=np.ones((2, 5), np.float32),
        segment_ids=np.ones((2, 5), np.int32),
        positions=np.tile(np.arange(5, dtype=np.int32), (2, 1)),
    )
    if info.get("packed"):
        return DataSplits(documents, rows, rows, info=info)
    return DataSplits(rows, rows, rows, info=info)


@pytest.mark.parametrize("flag", [None, True, False], ids=["default", "packed", "unpacked"])
@pytest.mark.parametrize("data_packed", [True, False], ids=["packed-data", "window-data"])
def test_build_task_packs_exactly_when_the_data_is_packed(flag, data_packed):
    info = {"packed": True, "seq_len": 4} if data_packed else {}
    task_config = {"name": "language_modeling"}
    if flag is not None:
        task_config["packed"] = flag
    config = ml_collections.ConfigDict({"task": task_config})
    if flag is not None and flag != data_packed:
        with pytest.raises(ConfigError, match="task.packed"):
            build_task(config, _lm_splits(info))
        return
    task = build_task(config, _lm_splits(info))
    assert task.packed == data_packed and task.seq_len == 4
    assert ("segment_ids" in task.batch_spec()) == data_packed


def test_build_task_needs_the_row_length_of_packed_data():
    config = ml_collections.ConfigDict({"task": {"name": "language_modeling"}})
    with pytest.raises(DataError, match="seq_len"):
        build_task(config, _lm_splits({"packed": True}))


# --------------------------------------------------------------------------------------------
# Gradient accumulation through a task


@pytest.mark.slow  # CI time (22 s): test_train_steps' gradient accumulation test stays
def test_lm_microbatched_step_equals_one_step_when_rows_have_equal_token_counts():
    seq_len, vocab = 8, 32
    task = LanguageModeling(seq_len=seq_len)
    model = get_model(
        "transformer_lm",
        vocab_size=vocab,
        num_layers=1,
        num_heads=2,
        embed_dim=16,
        mlp_dim=32,
        max_len=seq_len,
    )
    rng = np.random.default_rng(7)
    tokens = rng.integers(1, vocab, size=(4, seq_len + 1)).astype(np.int32)
    # Every row has 6 scored targets but at different places, so rows differ in what they count.
    loss_mask = np.zeros((4, seq_len + 1), np.float32)
    loss_mask[0, :7] = loss_mask[1, :7] = 1.0
    loss_mask[2, 3:] = loss_mask[3, 3:] = 1.0
    tokens[loss_mask == 0] = 0
    assert (loss_mask[:, 1:].sum(1) == 6).all()
    batch = {"tokens": tokens, "loss_mask": loss_mask}

    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    sharding = batch_sharding(mesh)
    results = []
    for microbatches in (1, 2):
        _, shardings, initialize = sharded_state_initializer(
            model, optax.sgd(0.5), lambda: task.init_inputs(4), mesh
        )
        step = ShardedStep(
            make_train_step(task, microbatches=microbatches),
            mesh,
            shardings,
            sharding,
            returns_state=True,
        )
        state, metrics = step(initialize(jax.random.PRNGKey(0)), shard_batch(batch, sharding))
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    (params_full, loss_full), (params_micro, loss_micro) = results
    assert loss_micro == pytest.approx(loss_full, rel=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        params_micro,
        params_full,
    )
    # The step did move the parameters (so the comparison above is not vacuous).
    initial = jax.device_get(initialize(jax.random.PRNGKey(0)).params)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params_full, initial)
    assert max(jax.tree.leaves(moved)) > 1e-3


# --------------------------------------------------------------------------------------------
# Loaders driven by a task's spec


def test_eval_batches_pad_each_field_with_its_pad_value_and_keep_int32_tokens():
    pad_id = 3
    task = SequenceClassification(max_len=4, num_classes=2, pad_id=pad_id)
    tokens = np.arange(5 * 4, dtype=np.int64).reshape(5, 4) + 10
    labels = np.array([0, 1, 1, 0, 1], np.int64)
    source = ArraySource(tokens=tokens, labels=labels, extra=np.zeros(5))
    batches = list(iterate_eval_batches(source, batch_size=4, spec=task.batch_spec()))
    assert len(batches) == 2
    for batch in batches:
        assert set(batch) == {"tokens", "labels", "mask"}
        assert batch["tokens"].dtype == np.int32 and batch["labels"].dtype == np.int32
        assert batch["mask"].dtype == np.float32
    last = batches[1]
    np.testing.assert_array_equal(last["mask"], [1, 0, 0, 0])
    np.testing.assert_array_equal(last["tokens"][0], tokens[4])
    assert (last["tokens"][1:] == pad_id).all()
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches])[:5], labels)

    # A shard that runs out first yields all-padding batches filled with the pad values too.
    shard_batches = list(
        iterate_eval_batches(
            source, batch_size=2, spec=task.batch_spec(), shard_index=1, shard_count=2
        )
    )
    assert len(shard_batches) == 2
    np.testing.assert_array_equal(shard_batches[1]["mask"], [0, 0])
    assert (shard_batches[1]["tokens"] == pad_id).all()
    assert shard_batches[1]["tokens"].dtype == np.int32


def test_lm_loaders_keep_token_ids_int32_and_pad_the_loss_mask_with_zero():
    task = LanguageModeling(seq_len=5, pad_id=2)
    rng = np.random.default_rng(8)
    # Token ids above 2**24 would be corrupted by a round trip through float32.
    tokens = rng.integers(2**24 + 1, 2**30, size=(3, 6)).astype(np.int64)
    loss_mask = np.ones((3, 6), np.float64)
    source = ArraySource(tokens=tokens, loss_mask=loss_mask)

    (batch,) = list(iterate_eval_batches(source, batch_size=4, spec=task.batch_spec()))
    assert batch["tokens"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
    np.testing.assert_array_equal(batch["tokens"][:3], tokens)
    assert (batch["tokens"][3] == 2).all() and (batch["loss_mask"][3] == 0).all()
    np.testing.assert_array_equal(batch["mask"], [1, 1, 1, 0])

    loader = make_train_loader(source, batch_size=2, seed=0, spec=task.batch_spec())
    train_batch = next(iter(loader))
    assert set(train_batch) == {"tokens", "loss_mask"}
    assert train_batch["tokens"].dtype == np.int32 and train_batch["tokens"].shape == (2, 6)
    assert train_batch["loss_mask"].dtype == np.float32
    rows = {tuple(row) for row in tokens.tolist()}
    assert all(tuple(row) in rows for row in train_batch["tokens"].tolist())
