"""Name -> model-factory registry, so configs and CLIs can build models by name."""

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import flax.linen as nn

F = TypeVar("F", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}

# Linen plumbing arguments that are not model hyper-parameters.
_NON_CONFIG_ARGS = frozenset({"parent", "name"})


def register_model(name: str, *, defaults: Mapping[str, Any] | None = None) -> Callable[[F], F]:
    """Decorator registering a model class (or ``functools.partial`` of one) under ``name``.

    A partial's keywords are fixed (``get_model`` refuses them); ``defaults`` are keywords the
    name sets unless the caller passes its own. Returns the factory unchanged. A name can be
    registered only once.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"Model name must be a non-empty string, got {name!r}")

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"Model name {name!r} is already registered")
        _REGISTRY[name] = factory
        _DEFAULTS[name] = dict(defaults or {})
        return factory

    return decorator


def available_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def _accepted_kwargs(factory: Callable[..., nn.Module]) -> set[str]:
    """Hyper-parameters a factory accepts; those fixed by a partial (an alias) are excluded."""
    fixed: set[str] = set()
    while isinstance(factory, functools.partial):
        fixed |= set(factory.keywords)
        factory = factory.func
    params = inspect.signature(factory).parameters
    return set(params) - fixed - _NON_CONFIG_ARGS


def get_model(name: str, **kwargs) -> nn.Module:
    """Instantiate the model registered as ``name`` with hyper-parameters ``kwargs``.

    Raises ValueError for an unknown name and TypeError for a keyword the model does not take
    (including one fixed by an alias, e.g. ``depth`` for 'resnet50').
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(available_models())}")
    factory = _REGISTRY[name]
    unknown = sorted(set(kwargs) - _accepted_kwargs(factory))
    if unknown:
        raise TypeError(
            f"Model {name!r} got unexpected keyword argument(s) {unknown}; "
            f"accepted: {sorted(_accepted_kwargs(factory))}"
        )
    return factory(**{**_DEFAULTS[name], **kwargs})


def model_hyperparameters(name: str) -> set[str]:
    """Keyword arguments the model registered as ``name`` accepts (so configs can be filled)."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(available_models())}")
    return _accepted_kwargs(_REGISTRY[name])
