"""Speech recognition: a Conformer with a CTC head on the synthesised espeak-ng corpus.

``jaxdl speech-corpus`` (or ``make speech-corpus``) generates the corpus into
``~/.cache/jaxdl/speech_corpus_v1`` (about 1 min here; needs Debian's espeak-ng and sox); the
test split has accents, voice settings and sentences never heard in training. Features are 80
log-mel bands computed on device; SpecAugment masks them while training.

    jaxdl train --config experiments/speech_conformer.py --workdir runs/speech
    jaxdl train --config experiments/speech_conformer.py:model=crnn_ctc --workdir runs/crnn
    jaxdl train --config experiments/speech_conformer.py:size=m,steps=30000,batch_size=32 ...  # GPU

Arguments: ``data`` (a folder of train/val/test.tsv manifests; default the generated corpus;
``tests/data/speech`` is the 50-utterance sample the tests use), ``model`` (conformer_ctc,
crnn_ctc or bilstm_ctc), ``size`` (tiny: 2 CPU cores; s, m, l: the paper's sizes), ``steps``,
``batch_size`` (the tiny default, 16 x 4,800 steps = 19.2 epochs: 32 x 2,000 scored worse than
16 x 4,000 in the same time, and 4,800 fit in it once dropout got cheaper: README).
``results.json`` carries ``wer`` and ``cer`` on the test split (greedy), ``wer_beam`` and
``cer_beam`` (the default decoder below), WER per accent (``wer_by_group``) and
``transcripts.jsonl`` one line per test utterance.
"""

import os

import ml_collections
from ml_collections import config_dict

from jaxdl import config_sections as sections
from jaxdl.config import parse_config_arg
from jaxdl.errors import ConfigError

DEFAULT_CORPUS = os.path.join("~", ".cache", "jaxdl", "speech_corpus_v1")
MODELS = ("conformer_ctc", "crnn_ctc", "bilstm_ctc")
# d_model, layers, heads: tiny trains on 2 CPU cores; s/m/l are Gulati et al.'s Table 1.
CONFORMER_SIZES = {"tiny": (144, 4, 4), "s": (144, 16, 4), "m": (256, 16, 4), "l": (512, 17, 8)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg, data=DEFAULT_CORPUS, model="conformer_ctc", size="tiny", steps=4800, batch_size=16
    )
    if args.model not in MODELS:
        raise ConfigError(f"experiments/speech_conformer.py: model must be one of {MODELS}")
    if args.size not in CONFORMER_SIZES:
        raise ConfigError(f"experiments/speech_conformer.py: size must be one of {CONFORMER_SIZES}")
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "speech_manifest"
    config.data.options = ml_collections.ConfigDict(
        {"dir": args.data, "sample_rate": 16000, "max_seconds": 0.0, "max_label_len": 0}
    )
    config.data.split_fractions = (0.8, 0.1, 0.1)  # unused: the manifests are the splits
    config.data.split_seed = 0
    config.data.worker_count = 0
    # Batches of similar-length utterances, padded to the smallest of 4 bounds (quantiles of the
    # training durations) instead of the longest utterance: a quarter of the padding.
    config.data.length_buckets = 4
    config.data.on_error = "skip"  # corrupt or empty audio: skipped, counted, reported
    config.data.max_error_fraction = 0.01

    config.task = ml_collections.ConfigDict({"name": "ctc"})
    config.task.front_end = ml_collections.ConfigDict(
        {"n_mels": 80, "feature": "log_mel", "normalize": "utterance", "preemphasis": 0.97}
    )
    # Park et al. 2019's LD policy with adaptive time masks (5% of the frames each).
    config.task.spec_augment = ml_collections.ConfigDict(
        {
            "freq_masks": 2,
            "freq_width": 27,
            "time_masks": 2,
            "time_width": 40,
            "max_time_fraction": 0.05,
        }
    )

    # Speed perturbation (tempo and pitch together, 0.9-1.1x) and white noise at 10-30 dB SNR on
    # a third of the utterances, on device from the step key.
    config.task.waveform_augment = ml_collections.ConfigDict(
        {"speed_factors": (0.9, 1.1), "noise_prob": 0.3, "snr_db": (10.0, 30.0)}
    )
    # The final report also decodes with prefix beam search and a word 3-gram LM over the
    # training transcripts' lexicon (results: wer_beam, cer_beam); evaluation while training is
    # greedy. Weight and word bonus: the best on the validation split of a seed-0 run
    # (benchmarks/speech_decoding.py); labels under e^-8 in a frame are not tried.
    config.task.decoder = ml_collections.ConfigDict(
        {
            "beam_width": 16,
            "lm_unit": "word",
            "lm_order": 3,
            "lm_weight": 0.4,
            "word_bonus": 2.0,
            "token_min_log_prob": -8.0,
        }
    )

    config.model = ml_collections.ConfigDict()
    config.model.name = args.model
    config.model.vocab_size = 0  # from the data's character tokenizer
    config.model.dropout_rate = 0.1
    config.model.dtype = "float32"
    if args.model == "conformer_ctc":
        d_model, layers, heads = CONFORMER_SIZES[args.size]
        config.model.d_model = d_model
        config.model.num_layers = layers
        config.model.num_heads = heads
        config.model.conv_kernel = 31 if args.size != "tiny" else 15
        config.model.positions = "relative"
        config.model.conv_norm = "batch"
        # The 4x subsampling's convolutions dominate a tiny model's step on CPU at d_model
        # channels; 64 keeps them a fraction of it.
        config.model.subsampling_channels = 64 if args.size == "tiny" else d_model
        # Two CTC output frames per 40 ms encoder frame: fast voices need up to one character
        # per encoder frame, and CTC can emit at most one label per output frame.
        config.model.output_upsampling = 2
    elif args.model == "bilstm_ctc":
        config.model.frame_stack = 4  # 40 ms frames: a 4x shorter recurrence, as the Conformer's

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.98
    config.optimizer.weight_decay = 1e-3
    config.optimizer.clip_global_norm = 5.0

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = min(400, args.steps // 10)
    config.schedule.min_value = 1e-5
    config.schedule.staircase = False

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = args.steps
    config.train.num_epochs = config_dict.placeholder(int)
    config.train.batch_size = args.batch_size
    config.train.per_device_batch_size = config_dict.placeholder(int)
    config.train.eval_batch_size = 64
    config.train.eval_every_steps = max(args.steps // 5, 1)
    config.train.microbatches = 1
    config.train.on_nonfinite = "skip"
    config.train.max_nonfinite_skips = 10
    config.train.rollback_lr_factor = 0.5
    config.train.max_rollbacks = 3

    config.init = sections.init()
    config.early_stopping = sections.early_stopping("val_wer", "min")
    config.checkpoint = sections.checkpoint(max_to_keep=2, every_steps=max(args.steps // 5, 1))
    config.mesh = sections.mesh("dp")
    config.distributed = sections.distributed()
    config.logging = sections.logging(every_steps=50)
    return config
