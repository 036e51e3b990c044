"""``jaxdl predict --workdir W INPUTS...`` (``jaxdl.export.predict_inputs``): image files get what
``classify_records`` gives their split records, texts from CSV columns and .txt lines what the
server's text path gives, in input order; an undecodable input keeps its row with the reason (or
stops the run), missing paths and columns are one-line errors, and no partial file is left."""

import csv
import json
import types

import numpy as np
import pytest
from PIL import Image

import jaxdl.experiment
import jaxdl.export
from jaxdl import cli
from jaxdl.data.image_sources import ImageFolderSource
from jaxdl.data.text_sources import CharTokenizer
from jaxdl.data.views import StandardizedImages
from jaxdl.errors import UserError
from jaxdl.export import inference_function
from jaxdl.export.predict_inputs import expand_inputs, predict_inputs
from jaxdl.export.predictions import classify_records
from jaxdl.models import get_model
from jaxdl.serving.uploads import AudioUploads, ImageUploads, TextUploads
from jaxdl.tasks.classification import ImageClassification, SequenceClassification
from jaxdl.tasks.ctc import CTCSpeechRecognition
from tests import test_serving
from tests.test_serving import CLASS_NAMES, SHAPE
from tests.test_serving_uploads import (
    AUDIO_CHARS,
    MEAN,
    STD,
    TEXTS_VOCAB,
    _random_variables,
    _wav,
)

classifier = test_serving.classifier  # the served ResNet-8 on 8x8x1 images (module fixture)
BATCH = 4  # every model call below has this batch size: one compile per model


def _png(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(10, 12), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)  # 12x10: resized to the model's 8x8


def _read(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        if str(path).endswith(".jsonl"):
            return [json.loads(line) for line in handle]
        return list(csv.DictReader(handle))


def _probs(row: dict, names=CLASS_NAMES) -> np.ndarray:
    return np.asarray([float(row[f"p_{name}"]) for name in names])


def _image_uploads(std=STD) -> ImageUploads:
    return ImageUploads(SHAPE, MEAN, std)


def test_png_files_predict_what_classify_records_gives_their_split_records(classifier, tmp_path):
    split = tmp_path / "split"  # an image-folder split: class folders of PNGs
    for index in range(6):
        _png(split / f"class_{index % 2}" / f"img_{index}.png", seed=index)
    records = StandardizedImages(ImageFolderSource(split, SHAPE[:2], "grayscale"), MEAN, STD)
    expected = list(classify_records(classifier, records, batch_size=BATCH))
    out = tmp_path / "out" / "p.csv"
    uploads = _image_uploads()
    inputs = expand_inputs([str(split)], uploads)
    summary = predict_inputs(classifier, uploads, inputs, str(out), CLASS_NAMES, BATCH)
    rows = _read(out)
    files = sorted(str(p) for p in split.rglob("*.png"))  # the split's order: class, then name
    assert [r["input"] for r in rows] == files
    for row, want in zip(rows, expected, strict=True):
        np.testing.assert_allclose(_probs(row), want["probabilities"], atol=1e-5)
        assert int(row["prediction"]) == int(np.argmax(want["probabilities"]))
        assert row["predicted_class"] == CLASS_NAMES[int(row["prediction"])]
        assert row["error"] == ""
    assert (summary.inputs, summary.skipped) == (6, 0)
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.csv"]  # no .partial left


def test_folders_expand_recursively_in_sorted_order_keeping_the_models_files(tmp_path):
    for name in ("b.png", "a/z.jpg", "a/b/c.jpeg", "a.PNG", "c/d.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    for skipped in ("notes.txt", "a/x.wav", ".hidden.png", ".cache/e.png"):
        (tmp_path / skipped).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / skipped).write_bytes(b"")
    single = tmp_path / "b.png"
    inputs = expand_inputs([str(single), str(tmp_path)], _image_uploads())
    names = [i.name.removeprefix(f"{tmp_path}/") for i in inputs]
    assert names == ["b.png", "a/b/c.jpeg", "a/z.jpg", "a.PNG", "b.png", "c/d.png"]


def test_a_corrupt_png_gets_an_error_row_and_the_others_stay_right(classifier, tmp_path):
    paths = [tmp_path / f"{name}.png" for name in ("first", "corrupt", "last")]
    _png(paths[0], seed=1)
    paths[1].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    _png(paths[2], seed=2)
    uploads = _image_uploads()
    out = tmp_path / "p.jsonl"
    inputs = expand_inputs([str(p) for p in paths], uploads)
    summary = predict_inputs(classifier, uploads, inputs, str(out), CLASS_NAMES, BATCH)
    rows = _read(out)
    assert [r["input"] for r in rows] == [str(p) for p in paths]
    assert rows[1]["error"].startswith("cannot decode the file as image/png")
    assert rows[1]["prediction"] == "" and "\n" not in rows[1]["error"]
    first, last = (uploads.decode(p.read_bytes(), "image/png", 1).inputs for p in paths[::2])
    want = classifier({"inputs": np.concatenate([first["inputs"], *[last["inputs"]] * 3])})
    np.testing.assert_allclose(_probs(rows[0]), want["probabilities"][0], atol=1e-5)
    np.testing.assert_allclose(_probs(rows[2]), want["probabilities"][1], atol=1e-5)
    assert (summary.inputs, summary.skipped) == (3, 1)
    assert "3 inputs, 1 skipped (see error column)" in summary.line()


@pytest.mark.filterwarnings("ignore:divide by zero")
def test_non_finite_standardised_pixels_never_get_a_prediction(classifier, tmp_path):
    _png(tmp_path / "x.png", seed=0)
    uploads = _image_uploads(std=[0.0])  # a zero channel std: infinite inputs
    out = tmp_path / "p.csv"
    predict_inputs(classifier, uploads, expand_inputs([str(tmp_path)], uploads), str(out))
    (row,) = _read(out)
    assert row["prediction"] == "" and "NaN or infinite" in row["error"]


def test_non_finite_model_outputs_never_become_a_prediction(tmp_path):
    class NaNModel:  # a stand-in classifier whose outputs overflowed: nothing to compile
        input_spec = ImageClassification(input_shape=SHAPE, num_classes=5).input_spec()
        output_names = ("logits", "probabilities")
        task = types.SimpleNamespace(num_classes=5)

        def __call__(self, inputs):
            nan = np.full((len(inputs["inputs"]), 5), np.nan, np.float32)
            return {"logits": nan, "probabilities": nan}

    _png(tmp_path / "x.png", seed=0)
    uploads, out = _image_uploads(), tmp_path / "p.csv"
    predict_inputs(NaNModel(), uploads, expand_inputs([str(tmp_path)], uploads), str(out))
    (row,) = _read(out)
    assert row["prediction"] == "" and row["error"] == "the model's outputs are NaN or infinite"


@pytest.fixture(scope="module")
def text_model():
    """A random one-layer Transformer classifier over 16 tokens, 3 classes, and its uploads."""
    task = SequenceClassification(max_len=16, num_classes=3)
    model = get_model(
        "transformer_classifier", vocab_size=50, num_classes=3, num_layers=1, num_heads=2,
        embed_dim=16, mlp_dim=32, max_len=16,
    )  # fmt: skip
    inference = inference_function(task, model, _random_variables(task, model))
    return inference, TextUploads(CharTokenizer.build([TEXTS_VOCAB]), task.max_len, str.strip)


def test_csv_rows_and_txt_lines_predict_what_the_server_gives_their_texts(text_model, tmp_path):
    inference, uploads = text_model
    table = tmp_path / "reviews.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([[1, "the lazy, fox"], [2, "  "], [3, "a dog\nover the fox " * 3]])
    lines = tmp_path / "more.txt"
    lines.write_text("the brown dog\n\n  \njumps over\n", encoding="utf-8")
    out = tmp_path / "p.jsonl"
    inputs = expand_inputs([str(table), str(lines)], uploads)
    summary = predict_inputs(inference, uploads, inputs, str(out), ["a", "b", "c"], BATCH)
    rows = _read(out)
    assert [r["input"] for r in rows] == [
        f"{table}:1", f"{table}:2", f"{table}:3", f"{lines}:1", f"{lines}:4",
    ]  # fmt: skip
    assert rows[1]["error"] == "text is empty (or only whitespace)"
    texts = ["the lazy, fox", "a dog\nover the fox " * 3, "the brown dog", "jumps over"]
    served = uploads.decode_json({"texts": texts}, BATCH)  # what POST /predict decodes
    want = inference(served.inputs)["probabilities"]
    good = [rows[0], rows[2], rows[3], rows[4]]
    np.testing.assert_allclose([_probs(r, "abc") for r in good], want, atol=1e-5)
    assert [r["truncated"] for r in good] == [False, True, False, False]
    assert served.notes["truncated"]["texts"] == [1]
    assert (summary.skipped, summary.truncated) == (1, 1)


class _SpellsABC:
    """A stand-in CTC model (nothing to compile) whose frames spell "abc" for every input."""

    output_names = ("log_probs", "lengths")

    def __init__(self, task: CTCSpeechRecognition, tokenizer: CharTokenizer):
        self.input_spec = task.input_spec()
        self.frames = [*tokenizer.encode("abc"), task.blank_id]

    def __call__(self, inputs: dict) -> dict:
        batch = len(inputs["audio_length"])
        log_probs = np.full((batch, len(self.frames), 12), -30.0, np.float32)
        log_probs[:, np.arange(len(self.frames)), self.frames] = 0.0
        return {"log_probs": log_probs, "lengths": np.full(batch, len(self.frames), np.int32)}


def test_audio_files_get_their_transcripts_and_undecodable_ones_an_error(tmp_path):
    task = CTCSpeechRecognition(max_samples=4000, max_label_len=8)  # 0.25 s at 16 kHz
    tokenizer = CharTokenizer.build([AUDIO_CHARS])
    uploads = AudioUploads(task, tokenizer)
    (tmp_path / "a.wav").write_bytes(_wav(0.2))
    (tmp_path / "b.wav").write_bytes(_wav(0.5, rate=16000))  # longer than the model takes
    (tmp_path / "c.flac").write_bytes(b"fLaC garbage")
    out = tmp_path / "p.csv"
    inputs = expand_inputs([str(tmp_path)], uploads)
    summary = predict_inputs(_SpellsABC(task, tokenizer), uploads, inputs, str(out), None, BATCH)
    rows = _read(out)
    assert list(rows[0]) == ["input", "prediction", "error"]
    assert [r["input"].rsplit("/", 1)[1] for r in rows] == ["a.wav", "b.wav", "c.flac"]
    assert rows[0]["prediction"] == "abc" and rows[0]["error"] == ""
    assert "longer than the 0.25 s the model takes" in rows[1]["error"]
    assert rows[2]["error"].startswith("cannot decode the file as audio/flac")
    assert summary.skipped == 2


def _experiment(task, info, data_name="digits"):
    config = types.SimpleNamespace(data=types.SimpleNamespace(name=data_name))
    return types.SimpleNamespace(task=task, data=types.SimpleNamespace(info=info), config=config)


def _main(monkeypatch, capsys, experiment, inference, argv) -> tuple[int, list[str], str]:
    """``jaxdl predict ARGV`` on ``experiment`` and ``inference``: exit code, stderr lines and
    stdout."""
    monkeypatch.setattr(cli, "trained_workdir_config", lambda workdir: {})
    monkeypatch.setattr(jaxdl.experiment, "build_experiment", lambda config: experiment)
    monkeypatch.setattr(cli, "_restore_best_state", lambda experiment, workdir: None)
    monkeypatch.setattr(jaxdl.export, "experiment_inference", lambda *_: inference)
    try:
        code = cli.main(["predict", *argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


def test_the_command_line_errors_are_one_line_exit_2(
    classifier, text_model, tmp_path, monkeypatch, capsys
):
    info = {"channel_mean": MEAN, "channel_std": STD, "class_names": CLASS_NAMES}
    images = _experiment(ImageClassification(input_shape=SHAPE, num_classes=5), info)
    _png(tmp_path / "ok.png", seed=0)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "t.csv").write_text("review\nthe fox\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    work = ["--workdir", str(tmp_path), "--out", str(out)]
    cases = {
        "input not found": [str(tmp_path / "missing.png")],
        "no .png, .jpg, .jpeg files in this folder": [str(tmp_path / "empty")],
        "bad.png: cannot decode the file as image/png": [
            str(tmp_path / "bad.png"), str(tmp_path / "ok.png"), "--on-error", "stop",
        ],
        "give INPUTS or --split, not both": [str(tmp_path / "ok.png"), "--split", "test"],
        "--text-column is for text models": [str(tmp_path / "ok.png"), "--text-column", "x"],
    }  # fmt: skip
    for message, argv in cases.items():
        code, err, stdout = _main(monkeypatch, capsys, images, classifier, [*argv, *work])
        assert code == 2 and len(err) == 1 and message in err[0], (message, err)
        assert not out.exists() and not (tmp_path / "out.csv.partial").exists()
    info = {"tokenizer": text_model[1].tokenizer, "class_names": ["a", "b", "c"]}
    texts = _experiment(SequenceClassification(max_len=16, num_classes=3), info, "texts")
    code, err, _ = _main(monkeypatch, capsys, texts, text_model[0], [str(tmp_path), *work])
    assert code == 2 and len(err) == 1 and "no column 'text' (columns: 'review')" in err[0]
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(UserError, match="blank.txt: no texts in this file"):
        expand_inputs([str(tmp_path / "blank.txt")], text_model[1])
    # Skips are counted in one line, exit 1 as for --split's unreadable examples.
    argv = [str(tmp_path / "bad.png"), str(tmp_path / "ok.png"), *work]
    code, err, stdout = _main(monkeypatch, capsys, images, classifier, argv)
    assert code == 1 and err == [] and stdout.startswith("2 inputs, 1 skipped (see error column)")
    assert [r["error"] != "" for r in _read(out)] == [True, False]
