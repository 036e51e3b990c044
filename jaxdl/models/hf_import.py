"""Import 🤗 GPT-2 and BERT checkpoints (safetensors) into ``TransformerLM`` /
``TransformerClassifier`` / ``TransformerMaskedLM`` parameter trees.

An explicit table maps every checkpoint tensor to one jaxdl parameter path with its layout
transform (MaxText/levanter style), so each weight is accounted for: a tensor no rule takes, a
parameter no tensor fills or a shape that does not fit is a one-line error naming it. Files are
read with NumPy (no torch, no hub access): point ``import_gpt2``, ``import_bert`` or
``import_bert_mlm`` at a downloaded checkpoint.
"""

import dataclasses
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy
from flax import traverse_util
from safetensors import SafetensorError

from jaxdl.errors import ConfigError, DataError
from jaxdl.integrity import key_path_str
from jaxdl.layers.embeddings import padded_size
from jaxdl.models.transformer import TransformerClassifier, TransformerLM, TransformerMaskedLM

# (checkpoint tensor, num_heads) -> the tensor in jaxdl's layout.
Transform = Callable[[np.ndarray, int], np.ndarray]


def _same(w: np.ndarray, heads: int) -> np.ndarray:
    return w


def _transposed(w: np.ndarray, heads: int) -> np.ndarray:
    """torch ``nn.Linear`` weight [out, in] -> kernel [in, out]."""
    return w.T


def _to_heads(w: np.ndarray, heads: int) -> np.ndarray:
    """[..., heads * head_dim] -> [..., heads, head_dim]: q/k/v kernels [E, H, D], biases [H, D]."""
    return w.reshape(*w.shape[:-1], heads, w.shape[-1] // heads)


def _from_heads(w: np.ndarray, heads: int) -> np.ndarray:
    """Output projection [heads * head_dim, E] -> [heads, head_dim, E]."""
    return w.reshape(heads, w.shape[0] // heads, w.shape[1])


def _fused_qkv(index: int) -> Transform:
    """Part ``index`` (0 query, 1 key, 2 value) of GPT-2's fused ``c_attn`` [E, 3E] or [3E]."""

    def select(w: np.ndarray, heads: int) -> np.ndarray:
        return _to_heads(np.split(w, 3, axis=-1)[index], heads)

    return select


def _qkv_to_heads(w: np.ndarray, heads: int) -> np.ndarray:
    """GPT-2's fused ``c_attn`` [E, 3E] or [3E] -> the fused ``qkv`` kernel [E, 3, H, D] or bias
    [3, H, D] (its output axis is query | key | value, each heads x head_dim)."""
    return w.reshape(*w.shape[:-1], 3, heads, w.shape[-1] // (3 * heads))


def _linear_to_heads(w: np.ndarray, heads: int) -> np.ndarray:
    return _to_heads(w.T, heads)


def _linear_from_heads(w: np.ndarray, heads: int) -> np.ndarray:
    return _from_heads(w.T, heads)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Checkpoint tensor ``source`` -> jaxdl parameter ``target`` (a ``/``-joined path under
    ``params``) via ``transform``.

    ``{i}`` in ``source`` is the layer index; ``{layers}`` in ``target`` becomes ``layers``
    (``scan_layers``: the layers are stacked on a leading axis) or ``layers_{i}`` (unrolled).
    """

    source: str
    target: str
    transform: Transform = _same


# GPT-2's Conv1D weights are already [in, out]; c_attn fuses q, k, v along its output axis.
GPT2_RULES = (
    Rule("wte.weight", "token_embed/embedding"),
    Rule("wpe.weight", "pos_embed/embedding"),
    Rule("h.{i}.ln_1.weight", "decoder/{layers}/attn_norm/scale"),
    Rule("h.{i}.ln_1.bias", "decoder/{layers}/attn_norm/bias"),
    Rule("h.{i}.attn.c_attn.weight", "decoder/{layers}/attention/query/kernel", _fused_qkv(0)),
    Rule("h.{i}.attn.c_attn.weight", "decoder/{layers}/attention/key/kernel", _fused_qkv(1)),
    Rule("h.{i}.attn.c_attn.weight", "decoder/{layers}/attention/value/kernel", _fused_qkv(2)),
    Rule("h.{i}.attn.c_attn.bias", "decoder/{layers}/attention/query/bias", _fused_qkv(0)),
    Rule("h.{i}.attn.c_attn.bias", "decoder/{layers}/attention/key/bias", _fused_qkv(1)),
    Rule("h.{i}.attn.c_attn.bias", "decoder/{layers}/attention/value/bias", _fused_qkv(2)),
    Rule("h.{i}.attn.c_proj.weight", "decoder/{layers}/attention/out/kernel", _from_heads),
    Rule("h.{i}.attn.c_proj.bias", "decoder/{layers}/attention/out/bias"),
    Rule("h.{i}.ln_2.weight", "decoder/{layers}/mlp_norm/scale"),
    Rule("h.{i}.ln_2.bias", "decoder/{layers}/mlp_norm/bias"),
    Rule("h.{i}.mlp.c_fc.weight", "decoder/{layers}/mlp/wi/kernel"),
    Rule("h.{i}.mlp.c_fc.bias", "decoder/{layers}/mlp/wi/bias"),
    Rule("h.{i}.mlp.c_proj.weight", "decoder/{layers}/mlp/wo/kernel"),
    Rule("h.{i}.mlp.c_proj.bias", "decoder/{layers}/mlp/wo/bias"),
    Rule("ln_f.weight", "decoder/final_norm/scale"),
    Rule("ln_f.bias", "decoder/final_norm/bias"),
)
GPT2_FUSED_QKV_RULES = (  # replace GPT2_RULES' q/k/v rules for ``qkv_fused`` models
    Rule("h.{i}.attn.c_attn.weight", "decoder/{layers}/attention/qkv/kernel", _qkv_to_heads),
    Rule("h.{i}.attn.c_attn.bias", "decoder/{layers}/attention/qkv/bias", _qkv_to_heads),
)
GPT2_UNTIED_HEAD = Rule("lm_head.weight", "lm_head/kernel", _transposed)
# Causal-mask buffers that older GPT-2 files carry (transformers skips them too).
GPT2_IGNORED = (r"h\.\d+\.attn\.(masked_)?bias",)

# config.json field -> the values TransformerLM reproduces; an absent field takes transformers'
# default, the first value.
_GPT2_REPRODUCIBLE = {
    "model_type": ("gpt2",),
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "layer_norm_epsilon": (1e-5,),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
}

# BERT's embeddings and encoder (``bert.`` prefix removed) in TransformerClassifier with
# norm_position='post' (attention.output.LayerNorm follows the attention residual: attn_norm;
# output.LayerNorm follows the MLP residual: mlp_norm), embedding_norm and token_type_vocab;
# torch nn.Linear weights are [out, in].
BERT_RULES = (
    Rule("embeddings.word_embeddings.weight", "token_embed/embedding"),
    Rule("embeddings.position_embeddings.weight", "pos_embed/embedding"),
    Rule("embeddings.token_type_embeddings.weight", "type_embed/embedding"),
    Rule("embeddings.LayerNorm.weight", "embed_norm/scale"),
    Rule("embeddings.LayerNorm.bias", "embed_norm/bias"),
    Rule(
        "encoder.layer.{i}.attention.self.query.weight",
        "encoder/{layers}/attention/query/kernel",
        _linear_to_heads,
    ),
    Rule(
        "encoder.layer.{i}.attention.self.key.weight",
        "encoder/{layers}/attention/key/kernel",
        _linear_to_heads,
    ),
    Rule(
        "encoder.layer.{i}.attention.self.value.weight",
        "encoder/{layers}/attention/value/kernel",
        _linear_to_heads,
    ),
    Rule(
        "encoder.layer.{i}.attention.self.query.bias",
        "encoder/{layers}/attention/query/bias",
        _to_heads,
    ),
    Rule(
        "encoder.layer.{i}.attention.self.key.bias",
        "encoder/{layers}/attention/key/bias",
        _to_heads,
    ),
    Rule(
        "encoder.layer.{i}.attention.self.value.bias",
        "encoder/{layers}/attention/value/bias",
        _to_heads,
    ),
    Rule(
        "encoder.layer.{i}.attention.output.dense.weight",
        "encoder/{layers}/attention/out/kernel",
        _linear_from_heads,
    ),
    Rule("encoder.layer.{i}.attention.output.dense.bias", "encoder/{layers}/attention/out/bias"),
    Rule("encoder.layer.{i}.attention.output.LayerNorm.weight", "encoder/{layers}/attn_norm/scale"),
    Rule("encoder.layer.{i}.attention.output.LayerNorm.bias", "encoder/{layers}/attn_norm/bias"),
    Rule(
        "encoder.layer.{i}.intermediate.dense.weight", "encoder/{layers}/mlp/wi/kernel", _transposed
    ),
    Rule("encoder.layer.{i}.intermediate.dense.bias", "encoder/{layers}/mlp/wi/bias"),
    Rule("encoder.layer.{i}.output.dense.weight", "encoder/{layers}/mlp/wo/kernel", _transposed),
    Rule("encoder.layer.{i}.output.dense.bias", "encoder/{layers}/mlp/wo/bias"),
    Rule("encoder.layer.{i}.output.LayerNorm.weight", "encoder/{layers}/mlp_norm/scale"),
    Rule("encoder.layer.{i}.output.LayerNorm.bias", "encoder/{layers}/mlp_norm/bias"),
)
# pooler='tanh' (BertModel's pooler, absent with add_pooling_layer=False).
BERT_POOLER_RULES = (
    Rule("pooler.dense.weight", "pooler/kernel", _transposed),
    Rule("pooler.dense.bias", "pooler/bias"),
)
# BertForSequenceClassification's head (a BertModel checkpoint has none).
BERT_HEAD_RULES = (
    Rule("classifier.weight", "head/kernel", _transposed),
    Rule("classifier.bias", "head/bias"),
)
# BertForMaskedLM's / BertForPreTraining's masked-LM head in TransformerMaskedLM (its decoder
# weight is the word-embedding table, tied; its decoder bias is cls.predictions.bias).
BERT_MLM_RULES = (
    Rule("cls.predictions.transform.dense.weight", "mlm_transform/kernel", _transposed),
    Rule("cls.predictions.transform.dense.bias", "mlm_transform/bias"),
    Rule("cls.predictions.transform.LayerNorm.weight", "mlm_norm/scale"),
    Rule("cls.predictions.transform.LayerNorm.bias", "mlm_norm/bias"),
    Rule("cls.predictions.bias", "mlm_bias"),
)
# The tied copies of BERT_MLM_RULES' decoder some files also store, and the next-sentence head.
BERT_MLM_IGNORED = (
    r"embeddings\.position_ids",
    r"cls\.predictions\.decoder\.(weight|bias)",
    r"cls\.seq_relationship\..*",
    r"pooler\..*",
)
# The position-id buffer older files carry, and BertForPreTraining's MLM / next-sentence heads
# (cls.*), which TransformerClassifier has no place for.
BERT_IGNORED = (r"embeddings\.position_ids", r"cls\..*")
# hidden_act -> mlp_activation.
_BERT_ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_BERT_REPRODUCIBLE = {
    "model_type": ("bert",),
    "position_embedding_type": ("absolute",),
    "is_decoder": (False,),
    "add_cross_attention": (False,),
}


def _weights_file(path: str | os.PathLike) -> str:
    """``path`` itself, or the ``model.safetensors`` in directory ``path``; it must exist."""
    file = os.path.join(path, "model.safetensors") if os.path.isdir(path) else os.fspath(path)
    if not os.path.isfile(file):
        raise DataError(f"no safetensors checkpoint at {file}")
    return file


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file (or of a directory's ``model.safetensors``)."""
    file = _weights_file(path)
    try:
        return safetensors.numpy.load_file(file)
    except (OSError, SafetensorError) as error:
        raise DataError(f"cannot read safetensors checkpoint {file}: {error}") from None


def abstract_params(model: nn.Module) -> dict[str, jax.ShapeDtypeStruct]:
    """``{path: ShapeDtypeStruct}`` of ``model``'s parameters, from ``jax.eval_shape`` (no
    arrays are allocated); ``model`` takes int tokens [batch, length] and ``train``."""
    init = functools.partial(model.init, train=False)
    shapes = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(shapes["params"]))[0]
    return {key_path_str(p): leaf for p, leaf in flat}


def _and_more(items: Sequence[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def map_tensors(
    tensors: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    target: Mapping[str, jax.ShapeDtypeStruct],
    *,
    num_layers: int,
    num_heads: int,
    scan_layers: bool,
    ignore: Sequence[str] = (),
    source: str = "checkpoint",
) -> dict[str, Any]:
    """The nested params dict that fills every leaf of ``target`` (see ``abstract_params``)
    from ``tensors`` by ``rules``, cast to the target dtypes.

    Checkpoint tensors matching an ``ignore`` regex are skipped. Raises ``DataError`` for the
    first missing, unexpected or mis-shaped tensor (``source`` names the checkpoint), and
    ``ConfigError`` when the rules and the model's parameters do not cover each other.
    """
    entries = []  # (tensor key, jaxdl path, layer index or None, transform)
    for rule in rules:
        for i in range(num_layers) if "{i}" in rule.source else [None]:
            layers = "layers" if scan_layers or i is None else f"layers_{i}"
            path = rule.target.format(layers=layers)
            entries.append((rule.source.format(i=i), path, i, rule.transform))
    missing = [key for key, *_ in entries if key not in tensors]
    if missing:
        raise DataError(f"{source}: no tensor {missing[0]}{_and_more(missing)}")
    keys = {key for key, *_ in entries}
    unexpected = sorted(
        key
        for key in tensors
        if key not in keys and not any(re.fullmatch(pattern, key) for pattern in ignore)
    )
    if unexpected:
        raise DataError(f"{source}: unexpected tensor {unexpected[0]}{_and_more(unexpected)}")
    paths = {path for _, path, *_ in entries}
    unknown, unfilled = sorted(paths - set(target)), sorted(set(target) - paths)
    if unknown or unfilled:
        problem = (
            f"has no parameter {unknown[0]}{_and_more(unknown)}"
            if unknown
            else f"parameter {unfilled[0]}{_and_more(unfilled)} has no tensor"
        )
        raise ConfigError(f"{source}: the model {problem}; its layout does not match the rules")

    flat: dict[str, Any] = {}
    for key, path, i, transform in entries:
        stacked = scan_layers and i is not None
        expected = target[path].shape[1:] if stacked else target[path].shape
        try:
            value = transform(tensors[key], num_heads)
            fits = value.shape == expected
        except (ValueError, IndexError):  # e.g. a size the heads or q/k/v do not divide
            fits = False
        if not fits:
            raise DataError(
                f"{source}: tensor {key} {tuple(tensors[key].shape)} does not fit "
                f"{path} {tuple(expected)}"
            )
        value = np.asarray(value, dtype=target[path].dtype)
        if stacked:
            flat.setdefault(path, [None] * num_layers)[i] = value
        else:
            flat[path] = value
    arrays = {path: np.stack(v) if isinstance(v, list) else v for path, v in flat.items()}
    return traverse_util.unflatten_dict({tuple(p.split("/")): v for p, v in arrays.items()})


def _read_config(directory: str) -> dict[str, Any]:
    """The checkpoint's ``config.json`` (hyper-parameters the tensors cannot tell, e.g. heads)."""
    file = os.path.join(directory, "config.json")
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"no config.json beside the checkpoint in {directory}") from None
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {file}: {error}") from None


def gpt2_model_kwargs(config: Mapping[str, Any], *, scan_layers: bool = True) -> dict[str, Any]:
    """``TransformerLM`` kwargs reproducing a 🤗 ``GPT2Config`` (its config.json as a dict).

    A setting TransformerLM cannot reproduce (another GELU or LayerNorm epsilon, cross
    attention, ...) is a ``ConfigError`` naming it. Dropout is left at jaxdl's default.
    """
    for field, allowed in _GPT2_REPRODUCIBLE.items():
        value = config.get(field, allowed[0])
        if value not in allowed:
            raise ConfigError(
                f"GPT-2 config {field}={value!r} cannot be reproduced by TransformerLM "
                f"(supported: {', '.join(map(repr, allowed))})"
            )
    try:
        embed_dim = int(config["n_embd"])
        return {
            "vocab_size": int(config["vocab_size"]),
            "num_layers": int(config["n_layer"]),
            "num_heads": int(config["n_head"]),
            "embed_dim": embed_dim,
            "mlp_dim": int(config.get("n_inner") or 4 * embed_dim),
            "max_len": int(config["n_positions"]),
            "position_embedding": "learned",
            "tie_embeddings": bool(config.get("tie_word_embeddings", True)),
            "scan_layers": scan_layers,
        }
    except KeyError as error:
        raise ConfigError(f"GPT-2 config has no {error.args[0]}") from None


def import_gpt2(
    path: str | os.PathLike,
    *,
    scan_layers: bool = True,
    qkv_fused: bool = False,
    vocab_divisible_by: int = 1,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_kwargs, params)`` for a 🤗 GPT-2 checkpoint, so that
    ``TransformerLM(**model_kwargs).apply({'params': params}, tokens, train=False)`` gives its
    logits.

    ``path``: a checkpoint directory (``model.safetensors`` and ``config.json``, as
    ``save_pretrained`` or a hub download leaves it) or the ``.safetensors`` file, with its
    ``config.json`` beside it. ``params`` are NumPy float32 arrays, the blocks stacked on a
    leading layer axis when ``scan_layers`` (else under ``layers_0`` ...). ``qkv_fused`` and
    ``vocab_divisible_by`` give the layout of the ``gpt2_small``/``gpt2_medium`` presets (one
    ``qkv`` kernel; the table, and an untied head, padded with zero rows that are never looked
    up and whose logits are dropped). Raises ``DataError``/``ConfigError`` (one line) for an
    unreadable, incomplete or non-GPT-2 checkpoint.
    """
    if vocab_divisible_by < 1:
        raise ConfigError(f"vocab_divisible_by must be >= 1, got {vocab_divisible_by}")
    file = _weights_file(path)
    kwargs = gpt2_model_kwargs(_read_config(os.path.dirname(file)), scan_layers=scan_layers)
    kwargs["qkv_fused"] = qkv_fused
    tensors = {key.removeprefix("transformer."): t for key, t in load_safetensors(file).items()}
    tied = kwargs["tie_embeddings"]
    rules = GPT2_RULES if tied else (*GPT2_RULES, GPT2_UNTIED_HEAD)
    if qkv_fused:
        rules = (*(r for r in rules if "c_attn" not in r.source), *GPT2_FUSED_QKV_RULES)
    params = map_tensors(
        tensors,
        rules,
        abstract_params(TransformerLM(**kwargs)),
        num_layers=kwargs["num_layers"],
        num_heads=kwargs["num_heads"],
        scan_layers=scan_layers,
        # A tied checkpoint may still store the (identical) output projection.
        ignore=(*GPT2_IGNORED, r"lm_head\.weight") if tied else GPT2_IGNORED,
        source=file,
    )
    if vocab_divisible_by > 1:
        kwargs["vocab_divisible_by"] = vocab_divisible_by
        rows = padded_size(kwargs["vocab_size"], vocab_divisible_by) - kwargs["vocab_size"]
        table = params["token_embed"]["embedding"]
        params["token_embed"]["embedding"] = np.pad(table, ((0, rows), (0, 0)))
        if not tied:
            params["lm_head"]["kernel"] = np.pad(params["lm_head"]["kernel"], ((0, 0), (0, rows)))
    return kwargs, params


def bert_model_kwargs(
    config: Mapping[str, Any], *, num_classes: int, pooler: bool = True, scan_layers: bool = True
) -> dict[str, Any]:
    """``TransformerClassifier`` kwargs reproducing a 🤗 ``BertConfig`` (its config.json as a
    dict) with a ``num_classes`` head; ``pooler``: whether the checkpoint has BERT's pooler.

    A setting TransformerClassifier cannot reproduce (relative positions, a decoder, another
    activation, ...) is a ``ConfigError`` naming it. Dropout is left at jaxdl's default.
    """
    for field, allowed in _BERT_REPRODUCIBLE.items():
        value = config.get(field, allowed[0])
        if value not in allowed:
            raise ConfigError(
                f"BERT config {field}={value!r} cannot be reproduced by TransformerClassifier "
                f"(supported: {', '.join(map(repr, allowed))})"
            )
    act = config.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _BERT_ACTIVATIONS:
        raise ConfigError(
            f"BERT config hidden_act={act!r} cannot be reproduced by TransformerClassifier "
            f"(supported: {', '.join(map(repr, _BERT_ACTIVATIONS))})"
        )
    epsilon = config.get("layer_norm_eps", 1e-12)
    if not (isinstance(epsilon, (int, float)) and epsilon > 0):
        raise ConfigError(f"BERT config layer_norm_eps={epsilon!r} must be a positive number")
    pad_id = config.get("pad_token_id", 0)
    if not isinstance(pad_id, int):
        raise ConfigError(f"BERT config pad_token_id={pad_id!r} must be an int")
    try:
        return {
            "vocab_size": int(config["vocab_size"]),
            "num_classes": num_classes,
            "num_layers": int(config["num_hidden_layers"]),
            "num_heads": int(config["num_attention_heads"]),
            "embed_dim": int(config["hidden_size"]),
            "mlp_dim": int(config["intermediate_size"]),
            "max_len": int(config["max_position_embeddings"]),
            "pooling": "cls",
            "pad_id": pad_id,
            "scan_layers": scan_layers,
            "position_embedding": "learned",
            "norm": "layer",
            "mlp_activation": _BERT_ACTIVATIONS[act],
            "norm_position": "post",
            "norm_epsilon": float(epsilon),
            "embedding_norm": True,
            "token_type_vocab": int(config.get("type_vocab_size", 2)),
            "pooler": "tanh" if pooler else "none",
        }
    except KeyError as error:
        raise ConfigError(f"BERT config has no {error.args[0]}") from None


def _bert_tensor_name(key: str) -> str:
    """A checkpoint key without ``bert.``, with TF-era LayerNorm ``gamma``/``beta`` renamed
    (as transformers does on load)."""
    key = key.removeprefix("bert.")
    if ".LayerNorm." in key:
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
    return key


def import_bert(
    path: str | os.PathLike, *, num_classes: int | None = None, scan_layers: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_kwargs, params)`` for a 🤗 ``BertForSequenceClassification`` or ``BertModel``
    checkpoint, so that ``TransformerClassifier(**model_kwargs).apply({'params': params},
    tokens, padding_mask, token_type_ids=types, train=False)`` gives its logits.

    ``path`` as for ``import_gpt2``. With a ``classifier`` head in the checkpoint the head is
    mapped and ``num_classes`` (optional) must match its rows. Without one (``BertModel``, or
    ``BertForPreTraining``, whose ``cls.*`` heads are skipped) ``num_classes`` is required and
    ``params`` has no ``head``: initialise it (e.g. warm-start with ``init.reinit`` covering
    ``params/head``); this is logged. A checkpoint without BERT's pooler gives
    ``pooler='none'``. Raises ``DataError``/``ConfigError`` (one line) for an unreadable,
    incomplete or non-BERT checkpoint.
    """
    file = _weights_file(path)
    config = _read_config(os.path.dirname(file))
    tensors = {_bert_tensor_name(key): t for key, t in load_safetensors(file).items()}
    has_head = "classifier.weight" in tensors
    if has_head:
        rows = tensors["classifier.weight"].shape[0]
        if num_classes is not None and num_classes != rows:
            raise ConfigError(
                f"{file}: num_classes={num_classes} but the checkpoint's classifier has {rows}"
            )
        num_classes = rows
    elif num_classes is None:
        raise ConfigError(f"{file} has no classifier head: pass num_classes for a fresh one")
    has_pooler = "pooler.dense.weight" in tensors
    kwargs = bert_model_kwargs(
        config, num_classes=num_classes, pooler=has_pooler, scan_layers=scan_layers
    )
    target = abstract_params(TransformerClassifier(**kwargs))
    if not has_head:
        target = {p: leaf for p, leaf in target.items() if not p.startswith("head/")}
    rules = (
        *BERT_RULES,
        *(BERT_POOLER_RULES if has_pooler else ()),
        *(BERT_HEAD_RULES if has_head else ()),
    )
    params = map_tensors(
        tensors,
        rules,
        target,
        num_layers=kwargs["num_layers"],
        num_heads=kwargs["num_heads"],
        scan_layers=scan_layers,
        ignore=BERT_IGNORED,
        source=file,
    )
    if not has_head:
        logging.getLogger("jaxdl").warning(
            "%s has no classifier head: params has no head (%d classes); initialise it",
            file,
            num_classes,
        )
    return kwargs, params


def import_bert_mlm(
    path: str | os.PathLike, *, scan_layers: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_kwargs, params)`` for a 🤗 ``BertForMaskedLM`` (or ``BertForPreTraining``)
    checkpoint, so that ``TransformerMaskedLM(**model_kwargs).apply({'params': params}, tokens,
    padding_mask, token_type_ids=types, train=False)`` gives its masked-LM logits. The pooler
    and next-sentence head, if present, are skipped. ``path`` as for ``import_gpt2``."""
    file = _weights_file(path)
    config = _read_config(os.path.dirname(file))
    if config.get("hidden_act", "gelu") not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(
            f"BERT config hidden_act={config.get('hidden_act')!r}: TransformerMaskedLM's head "
            "reproduces GELU activations only"
        )
    tensors = {_bert_tensor_name(key): t for key, t in load_safetensors(file).items()}
    kwargs = bert_model_kwargs(config, num_classes=1, pooler=False, scan_layers=scan_layers)
    for key in ("num_classes", "pooling", "pooler"):
        del kwargs[key]
    params = map_tensors(
        tensors,
        (*BERT_RULES, *BERT_MLM_RULES),
        abstract_params(TransformerMaskedLM(**kwargs)),
        num_layers=kwargs["num_layers"],
        num_heads=kwargs["num_heads"],
        scan_layers=scan_layers,
        ignore=BERT_MLM_IGNORED,
        source=file,
    )
    return kwargs, params


def save_as_jaxdl_init(params: Mapping[str, Any], directory: str | os.PathLike) -> None:
    """Write ``params`` as an Orbax checkpoint that a run warm-starts from with
    ``config.init.from_checkpoint=directory`` (its paths are ``params/...``, as in a jaxdl
    state); the run's ``config.model`` must match the import's ``model_kwargs``."""
    ocp.PyTreeCheckpointer().save(os.path.abspath(directory), {"params": dict(params)})
