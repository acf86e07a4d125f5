"""What a sweep searches: ``FIELD=SPEC`` strings over config fields, and the default space.

The spec grammar (``FIELD`` is any ``section.field`` of :class:`iicnet.model.config.Config`)::

    loguniform:LOW:HIGH   a float, uniform in log space (0 < LOW < HIGH)
    uniform:LOW:HIGH      a float, uniform (LOW < HIGH)
    randint:LOW:HIGH      an integer from LOW to HIGH, both included
    choice:V1,V2,...      one of the values, each read as YAML (2, 0.5, true, haar)

For example ``loss.lambda_res=loguniform:0.1:10``, ``model.blocks=choice:2,4,8``,
``optim.lr=uniform:1.0e-4:5.0e-4``. Fields joined by ``+`` take one value together:
``model.nf+model.growth=choice:8,16`` searches a width, each trial's ``nf`` equal to its
``growth``. Float ranges suit float fields only; an integer field
takes ``randint`` or ``choice``; any other field takes ``choice``. Every bound and choice is
checked against the config before anything runs, so ``model.blocks=choice:0,2`` fails at
once with the config's own message.

The default space (:func:`default_space`) is the question the sweep exists for: the three loss
weights, log-uniform around the published values (1, 0.001, 3), and the block count at half,
the same and one and a half times the config's. A grid search (:func:`to_tune` with
``grid=True``) takes only ``choice`` dimensions and runs every combination of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from iicnet.model.config import Config, ConfigError, from_dict

KINDS = ("loguniform", "uniform", "randint", "choice")


@dataclass(frozen=True)
class Dimension:
    """One searched field: ``kind`` and its ``args`` (bounds, or the choices)."""

    field: str
    kind: str
    args: tuple[Any, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """The config fields this dimension sets (several when joined by ``+``)."""
        return tuple(self.field.split("+"))

    @property
    def spec(self) -> str:
        """The ``FIELD=SPEC`` string this dimension reads back as."""
        if self.kind == "choice":
            return f"{self.field}=choice:{','.join(_scalar(v) for v in self.args)}"
        return f"{self.field}={self.kind}:{':'.join(_scalar(v) for v in self.args)}"

    def to_tune(self, grid: bool = False) -> Any:
        """The Ray Tune search domain (``tune.loguniform(...)`` etc.); with ``grid``, a
        ``choice`` as ``tune.grid_search`` (every value, in order)."""
        from ray import tune

        if grid:  # checked by grid_size when the sweep was set up
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "randint":
            return tune.randint(self.args[0], self.args[1] + 1)  # Tune's upper bound is excluded
        return getattr(tune, self.kind)(*self.args)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse(item: str, base: Config) -> Dimension:
    """``"FIELD=SPEC"`` as a :class:`Dimension`; :class:`ConfigError` names what is wrong."""
    field, sep, spec = item.partition("=")
    field, spec = field.strip(), spec.strip()
    kind, colon, rest = spec.partition(":")
    if not sep or not colon or kind not in KINDS:
        raise ConfigError(f"--space {item!r}: expected FIELD=KIND:ARGS with KIND one of "
                          f"{', '.join(KINDS)} (e.g. loss.lambda_res=loguniform:0.1:10)")
    flat = base.flat()
    parts = [part.strip() for part in field.split("+")]
    for part in parts:
        if part not in flat:
            raise ConfigError(f"--space {item!r}: unknown field {part!r} (fields: "
                              f"section.name, e.g. {', '.join(list(flat)[:3])}, ...)")
    if len(set(parts)) < len(parts):
        raise ConfigError(f"--space {item!r}: a field is named twice")
    field = "+".join(parts)
    current = flat[parts[0]]
    if kind == "choice":
        values = tuple(_value(v) for v in rest.split(",") if v.strip())
        if not values:
            raise ConfigError(f"--space {item!r}: choice needs at least one value")
        dim = Dimension(field, kind, values)
    else:
        bounds = rest.split(":")
        if len(bounds) != 2:
            raise ConfigError(f"--space {item!r}: {kind} takes LOW:HIGH")
        is_int = isinstance(current, int) and not isinstance(current, bool)
        if kind == "randint":
            if not is_int:
                raise ConfigError(f"--space {item!r}: {field} is not an integer field; use "
                                  "uniform, loguniform or choice")
            low, high = (_number(item, b, int) for b in bounds)
        else:
            if not isinstance(current, float):
                raise ConfigError(f"--space {item!r}: {field} is not a float field; use "
                                  f"{'randint or ' if is_int else ''}choice")
            low, high = (_number(item, b, float) for b in bounds)
        if kind != "randint" and not low < high or kind == "randint" and low > high:
            raise ConfigError(f"--space {item!r}: LOW must be below HIGH")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"--space {item!r}: loguniform needs LOW > 0")
        dim = Dimension(field, kind, (low, high))
    for value in dim.args:
        try:
            apply(base, {field: value})
        except ConfigError as exc:
            raise ConfigError(f"--space {item!r}: {value!r} does not make a valid config: "
                              f"{exc}") from exc
    return dim


def _value(text: str) -> Any:
    """A choice read as YAML, where ``1e-4`` is a number too (YAML 1.1 wants ``1.0e-4``)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _number(item: str, text: str, kind: type) -> Any:
    try:
        return kind(text) if kind is float else int(text)
    except ValueError:
        raise ConfigError(f"--space {item!r}: {text!r} is not "
                          f"{'a number' if kind is float else 'an integer'}") from None


def apply(base: Config, values: dict[str, Any]) -> Config:
    """``base`` with ``{"section.field": value}`` set; validated like a loaded config."""
    data = base.to_dict()
    for key, value in values.items():
        for part in key.split("+"):
            section, _, name = part.partition(".")
            data[section][name] = value
    return from_dict(data)


def grid_size(space: list[Dimension]) -> int:
    """How many combinations a grid over ``space`` runs; :class:`ConfigError` for a
    dimension that is not a ``choice``."""
    size = 1
    for dim in space:
        if dim.kind != "choice":
            raise ConfigError(f"--search grid: {dim.spec} is not a choice; a grid takes "
                              "FIELD=choice:V1,V2,... dimensions only")
        size *= len(dim.args)
    return size


def default_space(base: Config) -> list[Dimension]:
    """The loss weights (log-uniform) and the block count (a choice) around ``base``."""
    blocks = base.model.blocks
    choices = sorted({max(1, blocks // 2), blocks, blocks + max(1, blocks // 2)})
    return [
        Dimension("loss.lambda_emb", "loguniform", (0.25, 4.0)),
        Dimension("loss.lambda_freq", "loguniform", (1e-4, 1e-2)),
        Dimension("loss.lambda_res", "loguniform", (0.3, 10.0)),
        Dimension("model.blocks", "choice", tuple(choices)),
    ]


def build(base: Config, specs: list[str], fixed: list[str],
          defaults: bool = True) -> list[Dimension]:
    """The searched dimensions: the default space (unless ``defaults`` is false), where
    ``specs`` (``--space``) add or replace fields and fields named in ``fixed`` (the
    ``--set`` overrides) are left out."""
    space = {d.field: d for d in default_space(base)} if defaults else {}
    given = [parse(item, base) for item in specs]
    named = [f for d in given for f in d.fields]
    twice = sorted({f for f in named if named.count(f) > 1})
    if twice:
        raise ConfigError(f"--space: {', '.join(twice)} is searched by two dimensions; keep one")
    for field in fixed:
        if field in named:
            raise ConfigError(f"{field}: both --set and --space name it; keep one")
        space.pop(field, None)
    for dim in given:
        for field in dim.fields:
            space.pop(field, None)
    space.update({d.field: d for d in given})
    if not space:
        why = ("every default field is fixed by --set" if defaults
               else "a grid searches the --space dimensions only")
        raise ConfigError(f"--space: nothing left to search ({why}); add --space FIELD=SPEC")
    return list(space.values())
