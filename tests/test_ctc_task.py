"""The CTC task and the speech data path: loss on hand-computed cases, the float32 guards,
device WER/CER equal to jiwer's, and manifests → padded CTC records."""

import math
import shutil

import jax
import jax.numpy as jnp
import jiwer
import ml_collections
import numpy as np
import pytest
import soundfile

from jaxdl.audio import FrontEndConfig, perturb_waveforms
from jaxdl.data.records import RecordError
from jaxdl.data.speech import load_speech_manifests, normalize_transcript
from jaxdl.errors import ConfigError, DataError
from jaxdl.models.ctc_decoding import CharNgramLM, LexiconWordLM
from jaxdl.tasks import build_task
from jaxdl.tasks.ctc import CTCSpeechRecognition, ctc_losses, required_frames

SAMPLE = "tests/data/speech"


def _task(**overrides) -> CTCSpeechRecognition:
    return CTCSpeechRecognition(**{"max_samples": 1600, "max_label_len": 8, **overrides})


def test_ctc_loss_equals_hand_computed_alignment_sums():
    uniform = jnp.zeros((1, 2, 2))  # two frames, {blank, a} equally likely
    labels, one = jnp.array([[1]]), jnp.array([1])
    # "a" in 2 frames: paths a a, blank a, a blank -> 3 / 4.
    losses, feasible = ctc_losses(uniform, jnp.array([2]), labels, one)
    np.testing.assert_allclose(losses, [-math.log(0.75)], rtol=1e-6)
    assert bool(feasible[0])
    # In 1 frame only "a" itself: 1 / 2; frames past the length do not count.
    losses, _ = ctc_losses(uniform, jnp.array([1]), labels, one)
    np.testing.assert_allclose(losses, [-math.log(0.5)], rtol=1e-6)


def test_impossible_alignments_are_left_out_and_near_certain_ones_never_go_negative():
    logits = jnp.zeros((2, 2, 3))
    labels = jnp.array([[1, 1], [1, 2]])
    # "aa" needs a blank between the two a's: 3 frames; "ab" fits in 2.
    np.testing.assert_array_equal(required_frames(labels, jnp.array([2, 2])), [3, 2])
    losses, feasible = ctc_losses(logits, jnp.array([2, 2]), labels, jnp.array([2, 2]))
    np.testing.assert_array_equal(feasible, [False, True])
    assert losses[0] == 0.0 and losses[1] > 0
    certain = jnp.array([[[-50.0, 50.0, -50.0]]])  # "a" with probability ~1
    losses, _ = ctc_losses(certain, jnp.array([1]), jnp.array([[1]]), jnp.array([1]))
    assert float(losses[0]) >= 0.0


def _logits_for(token_rows: list[list[int]], vocab: int, frames: int) -> np.ndarray:
    """Logits whose greedy decoding is each row's tokens (a blank after every token)."""
    logits = np.full((len(token_rows), frames, vocab), -5.0, np.float32)
    logits[:, :, 0] = 5.0
    for b, tokens in enumerate(token_rows):
        for t, token in enumerate(tokens):
            logits[b, 2 * t, 0], logits[b, 2 * t, token] = -5.0, 5.0
    return logits


def test_device_wer_and_cer_equal_jiwer_on_random_transcripts():
    rng = np.random.default_rng(0)
    chars = " abcd"  # id 3 + index, as the char tokenizer numbers them; ' ' is the space
    ids = {c: 3 + i for i, c in enumerate(chars)}
    words = ["ab", "ba", "cd", "a", "dcb", "bb"]
    refs = [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(12)]
    hyps = [
        " ".join(w if rng.random() < 0.6 else rng.choice(words) for w in ref.split()[::-1])
        for ref in refs
    ]
    label_len = max(map(len, refs))
    labels = np.zeros((12, label_len), np.int32)
    for b, ref in enumerate(refs):
        labels[b, : len(ref)] = [ids[c] for c in ref]
    logits = _logits_for([[ids[c] for c in hyp] for hyp in hyps], 3 + len(chars), 64)
    task = CTCSpeechRecognition(max_samples=16, max_label_len=label_len, space_id=ids[" "])
    batch = {
        "labels": jnp.asarray(labels),
        "label_length": jnp.asarray([len(r) for r in refs], jnp.int32),
        "mask": jnp.ones(12),
        "features": jnp.zeros((12, 64, 1)),
        "feature_lengths": jnp.full((12,), 64, jnp.int32),
    }

    def forward(features, lengths):
        del features
        return jnp.asarray(logits), lengths

    results = task.summarize(jax.device_get(task.eval_sums(forward, batch)))
    assert results["wer"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-9)
    assert results["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-9)
    assert results["utterances"] == 12


def test_sample_manifests_become_padded_ctc_records():
    data = load_speech_manifests(dir=SAMPLE)
    info = data.info
    assert (len(data.train), len(data.val), len(data.test)) == (30, 8, 12)
    record = data.test[0]
    assert record["audio"].shape == (info["max_samples"],)
    assert record["labels"].shape == (info["max_label_len"],)
    length = int(record["label_length"])
    text = info["tokenizer"].decode(record["labels"][:length])
    assert text == data.test.transcript(0) == normalize_transcript(data.test.source.texts[0])
    assert not record["labels"][length:].any()  # padded with the blank id
    assert info["blank_id"] == 0 and info["space_id"] == int(info["tokenizer"].encode(" ")[0])
    assert 0 < int(record["audio_length"]) <= info["max_samples"]


def test_records_that_do_not_fit_are_named_errors(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "corpus")
    data = load_speech_manifests(dir=str(tmp_path / "corpus"), max_seconds=0.5)
    with pytest.raises(RecordError, match=r"train_0000\d\.wav.*max_seconds"):
        data.train[0]
    with pytest.raises(DataError, match="does not exist"):
        load_speech_manifests(dir=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="options.dir"):
        load_speech_manifests()
    manifest = tmp_path / "corpus" / "test.tsv"
    lines = manifest.read_text().splitlines()
    path = lines[1].split("\t")[0]
    manifest.write_text("\n".join([lines[0], f"{path}\t   "]) + "\n")
    data = load_speech_manifests(dir=str(tmp_path / "corpus"))
    with pytest.raises(RecordError, match="transcript"):
        data.test[0]


def test_task_builder_reads_the_data_and_rejects_bad_settings():
    data = load_speech_manifests(dir=SAMPLE)

    def config(**task):
        return ml_collections.ConfigDict({"task": {"name": "ctc", **task}})

    task = build_task(config(front_end={"n_mels": 40}, spec_augment={"freq_masks": 1}), data)
    assert task.front_end == FrontEndConfig(n_mels=40)
    assert dict(task.spec_augment) == {"freq_masks": 1}
    assert task.max_samples == data.info["max_samples"]
    with pytest.raises(ConfigError, match="sample_rate"):
        build_task(config(front_end={"sample_rate": 8000}), data)
    with pytest.raises(ConfigError, match="front_end"):
        build_task(config(front_end={"mels": 40}), data)
    with pytest.raises(ConfigError, match="spec_augment"):
        build_task(config(spec_augment={"warp": 3}), data)


def test_decoder_settings_build_the_chosen_lm_of_the_training_transcripts():
    data = load_speech_manifests(dir=SAMPLE)

    def decoder(**settings):
        config = ml_collections.ConfigDict({"task": {"name": "ctc", "decoder": settings}})
        return build_task(config, data)

    task = decoder(beam_width=4, lm_order=3, lm_unit="word", token_min_log_prob=-6.0)
    assert isinstance(task.lm, LexiconWordLM) and task.token_min_log_prob == -6.0
    tokenizer, train = data.info["tokenizer"], data.train
    training_words = {word for i in range(len(train)) for word in train.transcript(i).split()}
    assert {tokenizer.decode(list(word)) for word in task.lm.words} == training_words
    assert isinstance(decoder(beam_width=4, lm_order=3).lm, CharNgramLM)
    assert decoder(beam_width=4).lm is None and decoder().token_min_log_prob is None
    with pytest.raises(ConfigError, match="lm_unit"):
        decoder(beam_width=4, lm_order=3, lm_unit="phone")
    with pytest.raises(ConfigError, match="unknown task.decoder setting 'lm_type'"):
        decoder(lm_type="word")


def test_features_and_spec_augment_run_on_device_and_respect_lengths():
    audio, rate = soundfile.read(f"{SAMPLE}/wav/train/train_00000.wav", dtype="float32")
    assert rate == 16000
    task = _task(max_samples=audio.shape[0] + 800, spec_augment=(("time_masks", 2),))
    padded = np.zeros((2, task.max_samples), np.float32)
    padded[0, : audio.shape[0]] = audio
    padded[1, : audio.shape[0] // 2] = audio[: audio.shape[0] // 2]
    batch = {
        "audio": jnp.asarray(padded),
        "audio_length": jnp.asarray([audio.shape[0], audio.shape[0] // 2], jnp.int32),
    }
    prepared = task.prepare_train_batch(jax.random.key(0), batch)
    (features, lengths), _ = task.model_inputs(prepared)
    clean, clean_lengths = task.features(batch)
    np.testing.assert_array_equal(lengths, clean_lengths)
    assert features.shape == clean.shape and not np.allclose(features, clean)
    # Frames past each utterance stay zero, augmented or not.
    assert not np.asarray(features[1, int(lengths[1]) :]).any()


def test_waveform_perturbation_changes_speed_and_adds_noise_at_the_snr_inside_lengths():
    rate, tone = 16000, 440.0
    t = np.arange(8000) / rate
    audio = np.zeros((2, 12000), np.float32)
    audio[:, :8000] = np.sin(2 * np.pi * tone * t)
    lengths = jnp.asarray([8000, 8000], jnp.int32)
    fast, fast_lengths = perturb_waveforms(
        jax.random.key(0), jnp.asarray(audio), lengths, speed_factors=(1.25, 1.25)
    )
    assert fast_lengths.tolist() == [6400, 6400]
    spectrum = np.abs(np.fft.rfft(np.asarray(fast[0, :6400])))
    peak = np.argmax(spectrum) * rate / 6400
    assert abs(peak - tone * 1.25) < 5.0
    assert not np.asarray(fast[:, 6400:]).any()
    noisy, same = perturb_waveforms(
        jax.random.key(1), jnp.asarray(audio), lengths, noise_prob=1.0, snr_db=(20.0, 20.0)
    )
    assert same.tolist() == [8000, 8000]
    noise = np.asarray(noisy[:, :8000]) - audio[:, :8000]
    snr = 10 * np.log10(np.mean(audio[:, :8000] ** 2) / np.mean(noise**2))
    assert abs(snr - 20.0) < 0.3
    assert not np.asarray(noisy[:, 8000:]).any()
    again, _ = perturb_waveforms(
        jax.random.key(1), jnp.asarray(audio), lengths, noise_prob=1.0, snr_db=(20.0, 20.0)
    )
    np.testing.assert_array_equal(again, noisy)


@pytest.mark.parametrize("speed_factors", [(0.8, 0.8), (1.25, 1.25), (0.75, 1.3)])
def test_speed_perturbation_equals_numpy_linear_interpolation(speed_factors):
    """The on-device resampler indexes the uniform grid directly instead of searching it; it
    must give what np.interp gives at the same source positions, inside each new length."""
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((4, 3000)).astype(np.float32)
    lengths = jnp.asarray([3000, 2400, 123, 1], jnp.int32)
    key = jax.random.key(3)
    out, new_lengths = jax.jit(
        lambda k, a, n: perturb_waveforms(k, a, n, speed_factors=speed_factors)
    )(key, jnp.asarray(audio), lengths)
    speed_key = jax.random.split(key, 4)[0]
    low, high = speed_factors
    factors = np.asarray(jax.random.uniform(speed_key, (4,), minval=low, maxval=high))
    positions = np.arange(3000, dtype=np.float32)
    for row in range(4):
        source = positions * factors[row]
        expected = np.interp(source, positions, audio[row], right=0.0)
        expected[source > int(lengths[row]) - 1] = 0.0
        expected[positions >= int(new_lengths[row])] = 0.0
        np.testing.assert_allclose(np.asarray(out[row]), expected, atol=1e-6)
    assert int(new_lengths[3]) == 1


def test_a_slowed_utterance_that_fills_its_batch_is_not_cut():
    """A length-bucketed batch is padded only to its longest utterance; slowing that one down
    must lengthen it (the task makes room), not cut its end off with the transcript still
    asking for it."""
    audio = np.sin(np.arange(1600, dtype=np.float32) / 3.0)[None, :]
    task = _task(waveform_augment=(("speed_factors", (0.8, 0.8)),))
    batch = {"audio": jnp.asarray(audio), "audio_length": jnp.asarray([1600], jnp.int32)}
    prepared = task.prepare_train_batch(jax.random.key(0), batch)
    (_, lengths), _ = task.model_inputs(prepared)
    assert int(prepared["audio_length"][0]) == 1999  # floor(1599 / 0.8) + 1, not cut at 1600
    assert prepared["audio"].shape[1] >= 1999
    clean_lengths = task.features(batch)[1]
    assert int(lengths[0]) > int(clean_lengths[0])


def test_summary_table_names_the_decoder_of_every_error_rate():
    # The greedy WER and the beam search's per-accent WERs once shared one unlabelled "WER" name.
    results = {"loss": 0.5, "wer": 0.25, "cer": 0.08, "wer_beam": 0.04, "cer_beam": 0.03}
    results |= {"report_decoder": "beam", "wer_by_group": {"en-us": 0.05, "en-029": 0.02}}
    rows = dict(_task().summary_rows(results))
    assert rows["WER (greedy)"] == "0.2500" and rows["CER (greedy)"] == "0.0800"
    assert rows["WER (beam)"] == "0.0400" and rows["CER (beam)"] == "0.0300"
    assert rows["WER en-029 (beam)"] == "0.0200" and rows["WER en-us (beam)"] == "0.0500"
    greedy_only = dict(_task().summary_rows({"loss": 0.5, "wer": 0.25, "cer": 0.08}))
    assert set(greedy_only) == {"loss", "WER (greedy)", "CER (greedy)"}
