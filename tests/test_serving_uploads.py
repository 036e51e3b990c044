"""Uploads to the model server (``jaxdl.serving.uploads``): an image file predicts what the data
pipeline's record of the same file predicts, a text what its tokenised record predicts, a WAV
file gets the transcript ``jaxdl transcribe`` prints; every undecodable, empty, oversized or
wrongly typed body is a one-line 4xx, never a 5xx."""

import argparse
import dataclasses
import io
import json
import types
from collections.abc import Callable
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from PIL import Image

from jaxdl import cli
from jaxdl.data.image_sources import ImageFolderSource
from jaxdl.data.loading import load_data
from jaxdl.data.sources import load_digits_dataset
from jaxdl.data.split import stratified_split
from jaxdl.data.text_sources import CharTokenizer, TokenizedText
from jaxdl.data.views import StandardizedImages
from jaxdl.export import inference_function
from jaxdl.export.predictions import classify_records
from jaxdl.models import CharNgramLM, get_model
from jaxdl.serving import create_app
from jaxdl.serving.uploads import (
    AudioUploads,
    ImageUploads,
    TextUploads,
    experiment_uploads,
)
from jaxdl.tasks.classification import ImageClassification, SequenceClassification
from jaxdl.tasks.ctc import CTCSpeechRecognition
from tests import test_serving
from tests.test_serving import CLASS_NAMES, SHAPE

classifier = test_serving.classifier  # the served ResNet-8 on 8x8x1 images (module fixture)
MEAN, STD = [0.4], [0.3]  # the channel statistics the image uploads are standardised with
TEXTS_VOCAB = "the quick brown fox jumps over a lazy dog"
AUDIO_CHARS = "abcdefghi"  # with pad, unk and cls: the tiny conformer's 12 output ids


def _random_variables(task, model, seed: int = 0):
    """Variables of ``model``'s structure for ``task``'s inputs, drawn with numpy (nothing is
    compiled); the rules of ``test_serving._random_variables``."""

    def init():
        args, kwargs = task.init_inputs(1)
        return model.init(jax.random.key(0), *args, train=False, **kwargs)

    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if leaf.ndim >= 2:
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif "scale" in name or "var" in name:
            value = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:
            value = rng.normal(scale=0.1, size=leaf.shape)
        return value.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, flax.linen.meta.unbox(jax.eval_shape(init)))


@flax.struct.dataclass
class _State:
    """What ``jaxdl transcribe`` reads of a restored train state."""

    params: Any
    batch_stats: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False, default=None)


def _post(client, body: bytes, content_type: str):
    return client.post("/predict", content=body, headers={"content-type": content_type})


def _assert_refused(reply, status: int, message: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(reply.json()) == {"error"} and "\n" not in error
    assert message in error, error


def _image_bytes(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _rgb_image() -> Image.Image:
    """24x20 RGB with smooth structure: converted to grey and resized to 8x8 when served."""
    y, x = np.mgrid[0:20, 0:24]
    channels = [np.sin(x / 3.0 + k) * np.cos(y / 4.0 - k) for k in range(3)]
    pixels = (np.stack(channels, -1) * 120 + 128).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="module")
def image_client(classifier):
    uploads = ImageUploads(SHAPE, MEAN, STD)
    app = create_app(classifier, {"class_names": CLASS_NAMES}, max_batch=2, uploads=uploads)
    with TestClient(app) as client:
        yield client


def test_an_image_file_predicts_what_the_pipelines_record_of_that_file_does(
    image_client, classifier, tmp_path
):
    image = _rgb_image()
    (tmp_path / "x").mkdir()
    files = {"image/jpeg": "digit.jpg", "image/png": "digit.png"}  # the folder's sorted order
    bodies = {}
    for media, name in files.items():
        bodies[media] = _image_bytes(image, "JPEG" if name.endswith("jpg") else "PNG")
        (tmp_path / "x" / name).write_bytes(bodies[media])
    # What `jaxdl predict` runs over an image_folder experiment's split, on the same files.
    folder = ImageFolderSource(tmp_path, image_size=SHAPE[:2], color_mode="grayscale")
    records = StandardizedImages(folder, MEAN, STD)
    rows = list(classify_records(classifier, records, batch_size=1))
    for row, media in zip(rows, files, strict=True):
        reply = _post(image_client, bodies[media], media)
        assert reply.status_code == 200, reply.text
        served = reply.json()
        np.testing.assert_allclose(
            served["outputs"]["probabilities"][0], row["probabilities"], rtol=1e-5, atol=1e-6
        )
        assert served["predictions"] == [int(np.argmax(row["probabilities"]))]
        assert served["predicted_classes"] == [CLASS_NAMES[served["predictions"][0]]]
        # The same preprocessed pixels sent as a JSON array: the same outputs.
        pixels = records[row["index"]]["inputs"][None].tolist()
        reply = image_client.post("/predict", json={"inputs": {"inputs": pixels}})
        assert reply.json() == served
    assert image_client.get("/metadata").json()["uploads"] == {
        "media_types": ["image/png", "image/jpeg"],
        "size": [8, 8],
        "color_mode": "grayscale",
    }


def test_image_uploads_use_the_runs_channel_statistics():
    """Digits record their train statistics, and standardising a raw image with them gives the
    split's record: what a served image of a digit is compared against."""
    config = ml_collections.ConfigDict({"name": "digits", "split_seed": 0, "standardize": True})
    data = load_data(config)
    digits = load_digits_dataset()
    first_test = stratified_split(digits.labels, (0.7, 0.15, 0.15), seed=0)[2][0]
    info = data.info
    record = StandardizedImages(
        [{"inputs": digits.inputs[first_test]}], info["channel_mean"], info["channel_std"]
    )[0]
    np.testing.assert_allclose(record["inputs"], data.test[0]["inputs"], rtol=1e-6, atol=1e-6)
    task = ImageClassification(input_shape=(8, 8, 1), num_classes=10)
    experiment = types.SimpleNamespace(task=task, data=data)
    uploads = experiment_uploads(experiment, "unused")
    assert isinstance(uploads, ImageUploads) and uploads.color_mode == "grayscale"
    np.testing.assert_array_equal(uploads.mean, np.float32(info["channel_mean"]))


def _png() -> bytes:
    return _image_bytes(_rgb_image(), "PNG")


def _jpeg() -> bytes:
    return _image_bytes(_rgb_image(), "JPEG")


BAD_IMAGES = {
    "corrupt png": (lambda: _png()[:40] + b"\x00" * 200, "image/png", 400, "cannot decode"),
    "truncated png": (lambda: _png()[: len(_png()) // 2], "image/png", 400, "cannot decode"),
    "truncated jpeg": (lambda: _jpeg()[:-100], "image/jpeg", 400, "image file is truncated"),
    "jpeg sent as png": (_jpeg, "image/png", 400, "not a PNG file"),
    "empty body": (lambda: b"", "image/jpeg", 400, "empty body"),
    "too many pixels": (
        lambda: _image_bytes(Image.new("1", (5000, 4000)), "PNG"),
        "image/png",
        413,
        "image of 5000x4000 pixels is larger than",
    ),
    "wav to an image model": (lambda: b"RIFF", "audio/wav", 415, "takes application/json, image"),
    "text to an image model": (lambda: b"7", "text/plain", 415, "unsupported Content-Type"),
    "multipart form": (_png, "multipart/form-data; boundary=x", 415, "send the file itself"),
    "unknown type": (_png, "application/xml", 415, "'application/xml'"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_bad_image_upload_gets_a_4xx_with_one_line(image_client, case):
    body, media, status, message = BAD_IMAGES[case]
    _assert_refused(_post(image_client, body(), media), status, message)


def test_damaged_image_files_never_get_a_5xx(image_client):
    rng = np.random.default_rng(0)
    for media, good in (("image/png", _png()), ("image/jpeg", _jpeg())):
        for _ in range(15):
            body = bytearray(good)
            for index in rng.integers(0, len(body), size=int(rng.integers(1, 8))):
                body[index] = int(rng.integers(0, 256))
            reply = _post(image_client, bytes(body[: int(rng.integers(8, len(body) + 1))]), media)
            assert reply.status_code in (200, 400), reply.text
    assert image_client.get("/healthz").status_code == 200


# --- Text ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_model():
    task = SequenceClassification(max_len=16, num_classes=3)
    model = get_model(
        "transformer_classifier", vocab_size=50, num_classes=3, num_layers=1, num_heads=2,
        embed_dim=16, mlp_dim=32, max_len=16,
    )  # fmt: skip
    inference = inference_function(task, model, _random_variables(task, model))
    tokenizer = CharTokenizer.build([TEXTS_VOCAB])
    uploads = TextUploads(tokenizer, task.max_len, str.strip)
    app = create_app(inference, {"class_names": ["a", "b", "c"]}, max_batch=2, uploads=uploads)
    with TestClient(app) as client:
        yield client, inference, tokenizer


def _pipeline_tokens(tokenizer, texts: list[str]) -> np.ndarray:
    """Tokens as the text data pipeline makes them (``TokenizedText``: CLS, cut, padded)."""
    source = TokenizedText([{"text": t} for t in texts], tokenizer, max_len=16, add_cls=True)
    return np.stack([source[i]["tokens"] for i in range(len(texts))])


def test_a_text_predicts_what_its_tokenised_record_does(text_model):
    client, inference, tokenizer = text_model
    short, long = "the lazy fox", "a quick brown dog jumps over the fox"
    want = inference({"tokens": _pipeline_tokens(tokenizer, [short, long])})
    reply = _post(client, f"  {short}\n".encode(), "text/plain; charset=utf-8")
    assert reply.status_code == 200, reply.text
    assert "truncated" not in reply.json()
    np.testing.assert_allclose(reply.json()["outputs"]["logits"], want["logits"][:1], atol=1e-5)
    reply = client.post("/predict", json={"texts": [short, long]})
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["outputs"]["logits"], want["logits"], atol=1e-5)
    assert reply.json()["truncated"] == {"texts": [1], "max_tokens": 16}
    assert reply.json()["predictions"] == np.argmax(want["logits"], -1).tolist()
    single = client.post("/predict", json={"text": short}).json()
    np.testing.assert_allclose(single["outputs"]["logits"], want["logits"][:1], atol=1e-5)


BAD_TEXTS = {
    "empty body": (b"", "text/plain", 422, "text 0 is empty"),
    "only whitespace": (b" \n\t", "text/plain", 422, "text 0 is empty"),
    "empty in a list": (json.dumps({"texts": ["fox", " "]}).encode(), "", 422, "text 1 is empty"),
    "no texts": (json.dumps({"texts": []}).encode(), "application/json", 422, "no texts"),
    "texts not a list": (b'{"texts": "fox"}', "application/json", 422, "must be a list"),
    "not a string": (b'{"texts": ["fox", 3]}', "application/json", 422, "text 1 must be a str"),
    "both keys": (b'{"text": "a", "texts": []}', "application/json", 400, "got keys"),
    "lone surrogate": (b'{"text": "fox \\ud800"}', "application/json", 422, "not valid Unicode"),
    "not utf-8": (b"fox \xff", "text/plain", 400, "not UTF-8"),
    "too many texts": (b'{"texts": ["a", "b", "c"]}', "", 413, "3 texts exceed"),
    "image to a text model": (b"\x89PNG", "image/png", 415, "takes application/json, text/plain"),
}


@pytest.mark.parametrize("case", sorted(BAD_TEXTS))
def test_a_bad_text_gets_a_4xx_with_one_line(text_model, case):
    body, media, status, message = BAD_TEXTS[case]
    _assert_refused(_post(text_model[0], body, media), status, message)


# --- Speech -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_model():
    task = CTCSpeechRecognition(max_samples=4000, max_label_len=8)  # 0.25 s at 16 kHz
    model = get_model("conformer_ctc_tiny", vocab_size=12)
    inference = inference_function(task, model, _random_variables(task, model))
    tokenizer = CharTokenizer.build([AUDIO_CHARS])
    uploads = AudioUploads(task, tokenizer)
    app = create_app(inference, {"task": "ctc"}, max_batch=1, uploads=uploads)
    with TestClient(app) as client:
        yield client, inference, uploads


def _wav(seconds: float, rate: int = 8000, subtype: str = "PCM_16", value=None) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.5 * np.sin(2 * np.pi * (300 + 900 * t) * t) * np.hanning(len(t))
    if value is not None:
        audio[len(t) // 2] = value
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def test_a_wav_file_gets_the_transcript_jaxdl_transcribe_prints(
    speech_model, tmp_path, monkeypatch, capsys
):
    client, inference, uploads = speech_model
    path = tmp_path / "clip.wav"
    path.write_bytes(_wav(0.2))  # 8 kHz: resampled to the model's 16 kHz
    # `jaxdl transcribe` itself, on an "experiment" holding the served model and tokenizer.
    state = _State(inference.variables["params"], inference.variables.get("batch_stats"))
    state = state.replace(apply_fn=inference.model.apply)
    monkeypatch.setattr(cli, "_restore_best_state", lambda experiment, workdir: state)
    experiment = types.SimpleNamespace(
        task=uploads.task,
        data=types.SimpleNamespace(info={"tokenizer": uploads.task.tokenizer}),
        mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",)),
        rules=(),
    )
    args = argparse.Namespace(workdir=str(tmp_path), files=[str(path)])
    assert cli._transcribe(args, experiment) == 0
    printed = capsys.readouterr().out.rstrip("\n").split("\t")
    assert printed[0] == str(path) and printed[1]  # a random model still says something

    reply = _post(client, path.read_bytes(), "audio/wav")
    assert reply.status_code == 200, reply.text
    assert reply.json()["transcripts"] == [printed[1]]
    # The same padded samples as JSON arrays get the same transcript.
    inputs = uploads.decode(path.read_bytes(), "audio/wav", 1).inputs
    body = {"inputs": {name: value.tolist() for name, value in inputs.items()}}
    assert client.post("/predict", json=body).json()["transcripts"] == [printed[1]]

    # A run that decodes with beam search and an LM: transcribe prints the beam transcript,
    # the one the served model's beam decoder gives for the same log-probabilities.
    lm = CharNgramLM(2, uploads.task.tokenizer.vocab_size).fit([(1, 2, 3, 2, 1)])
    beam_task = dataclasses.replace(uploads.task, beam_width=3, lm=lm, lm_weight=0.8)
    monkeypatch.setattr(experiment, "task", beam_task)
    assert cli._transcribe(args, experiment) == 0
    beam_printed = capsys.readouterr().out.rstrip("\n").split("\t")[1]
    served = inference.fn(*(inputs[name] for name in ("audio", "audio_length")))
    served = {
        name: np.asarray(value) for name, value in zip(inference.output_names, served, strict=True)
    }
    expected = AudioUploads(beam_task, beam_task.tokenizer).respond(served)["beam_transcripts"]
    assert [beam_printed] == expected


def test_beam_search_transcripts_come_with_the_greedy_ones(speech_model):
    task = speech_model[2].task
    beam = AudioUploads(dataclasses.replace(task, beam_width=2), task.tokenizer)
    log_probs = np.log(np.random.default_rng(0).dirichlet(np.ones(12), size=(1, 6)))
    response = beam.respond({"log_probs": log_probs.astype(np.float32), "lengths": np.int32([6])})
    assert set(response) == {"transcripts", "beam_transcripts"}
    assert all(isinstance(t, str) for t in response["transcripts"] + response["beam_transcripts"])


BAD_AUDIO = {
    "garbage": (lambda: b"RIFF\x00\x01garbage" * 10, "audio/wav", 400, "cannot decode the body"),
    "header only": (lambda: _wav(0.2)[:44], "audio/x-wav", 422, "holds no samples"),
    "empty body": (lambda: b"", "audio/wav", 400, "empty body"),
    "too long": (lambda: _wav(0.5, rate=16000), "audio/wav", 413, "longer than the 0.25 s"),
    "nan sample": (
        lambda: _wav(0.1, subtype="FLOAT", value=np.nan),
        "audio/wav",
        422,
        "NaN or infinite samples",
    ),
    "image to a speech model": (_png, "image/png", 415, "takes application/json, audio/wav"),
}


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_bad_audio_gets_a_4xx_with_one_line(speech_model, case):
    body, media, status, message = BAD_AUDIO[case]
    _assert_refused(_post(speech_model[0], body(), media), status, message)
