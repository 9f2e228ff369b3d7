"""Worlds: where prompts, the student, the fidelity experts and (when known) the true quality come from.

A profile is only parameters: every notebook names its world (``world: {kind: tiny, seed: 0}``) and calls
:func:`make_world`; no notebook and no method module (multifidelity, expo, hbat, evaluation) constructs a
concrete world. Everything they need goes through the protocol below.

The World protocol
------------------
``kind: str``
    The registered kind (``"tiny"``); named in error messages.
``key: str``
    Identity of the world's prompts and models, part of every cache key derived from it (sampled responses,
    judge verdicts, ExPO adapters, multi-fidelity runs). Stable across processes.
``prompts: Mapping[str, list[str]]``
    ``"train"`` (the alignment prompt set X), ``"validation"`` and ``"test"``: fixed, seeded, disjoint.
``roles: list[str]``
    Everyone who answers a prompt: the student and the fidelity experts (and whatever else the world offers).
``costs: dict[str, float]``
    Cost per response of each role (the multi-fidelity paper's lambda^(m)).
``quality: Callable[[str, str], float] | None``
    The known quality q(prompt, response) in [0, 1], or None when the world has none (then the oracle
    judge is unavailable: ``judge: {kind: oracle}`` fails in the notebook's first cell naming ``judge.kind``).
``build(show_progress=True) -> dict[str, float]``
    Make whatever is not cached yet (idempotent); seconds spent per piece (0 for cached ones).
``load(role) -> (model, tokenizer)``
    A fresh, trainable causal LM and its left-padding tokenizer, for roles that are models (the student,
    ExPO's SFT model, HbAT's initial model). Callers may train what they get.
``respond(role, prompts, sampling, seed, *, show_progress=False) -> list[str]``
    One response per prompt from a role: the key generalisation. In ``tiny`` a role's model samples; a
    world may instead answer with a procedure (best-of-k samples under a checker) or a hub model served by
    another engine. Expert responses are always obtained here, never by ``load(expert)``. Deterministic
    given (role, prompts, sampling, seed).
``describe(role) -> str``
    One line for tables (tiny: the role's habits).
``parameters(role) -> int | None``
    Size of the model behind a role, None when unknown.
``identity(role) -> dict``
    JSON-able identity of what ``load(role)`` / ``respond(role, ...)`` give; hashed into the keys of
    anything trained from that role (HbAT's stage store).

Capabilities (methods a world may lack; a notebook needing one calls :func:`require` in its first cell)
------------------------------------------------------------------------------------------------------
``preference_pairs(prompts, source) -> list[{"prompt", "chosen", "rejected"}]``
    ExPO's preference data (tiny: ``correct_vs_habit``, the right answer over the student's habit).
``reward_model(spec, show_progress=True) -> Path``
    The folder of the world's own reward model for ExPO (a sequence-classification model that took no part
    in training the policies), built once and cached; ``spec`` is the notebook's ``reward_model`` params.
``reward_pairs(prompts, seed) -> list[{"prompt", "chosen", "rejected"}]``
    Pairs ranked by the known quality, drawn like the reward model's training pairs (to check it).
``conflict(spec) -> Conflict``
    HbAT's alignment tax: demonstrations and preferences that pull apart, and the scores that show it
    (see :mod:`mfnb.hbat.ablations` for what a Conflict offers).

Kinds are registered by name (:data:`KINDS`, :func:`register`) and imported only when used, so the
``smol`` and ``paper`` worlds plug in with one line each.
"""
from __future__ import annotations

from typing import Annotated, Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from pydantic import AfterValidator

from mfnb.core.imports import resolve
from mfnb.core.params import ParamsError

# kind -> "module:factory"; the factory takes (values: dict, source: str) and returns a World
KINDS: dict[str, str | Callable[..., Any]] = {
    "tiny": "mfnb.worlds.tiny.world:TinyWorld.from_spec",
    "paper": "mfnb.worlds.paper.world:PaperWorld.from_spec",
    "smol": "mfnb.worlds.smol.world:SmolWorld.from_spec",
}

CAPABILITIES = {  # what each capability is, for error messages
    "quality": "a known quality function",
    "preference_pairs": "ExPO's preference pairs",
    "reward_model": "a reward model of its own for ExPO",
    "reward_pairs": "pairs ranked by the known quality, to check a reward model",
    "conflict": "HbAT's alignment-tax conflict",
}


@runtime_checkable
class World(Protocol):
    """What notebooks and method modules may use of a world (see the module docstring)."""

    kind: str
    key: str
    prompts: Mapping[str, list[str]]
    roles: list[str]
    costs: dict[str, float]
    quality: Callable[[str, str], float] | None

    def build(self, show_progress: bool = True) -> dict[str, float]: ...
    def load(self, role: str) -> tuple[Any, Any]: ...
    def respond(self, role: str, prompts: Sequence[str], sampling: Any, seed: int = 0, *,
                show_progress: bool = False) -> list[str]: ...
    def describe(self, role: str) -> str: ...
    def parameters(self, role: str) -> int | None: ...
    def identity(self, role: str) -> dict: ...


def register(kind: str, factory: str | Callable[..., Any]) -> None:
    """Make ``world: {kind: <kind>, ...}`` build with ``factory(values, source)`` ("module:attr" imports lazily)."""
    KINDS[kind] = factory


def _factory(kind: str) -> Callable[..., Any]:
    target = KINDS[kind]
    if callable(target):
        return target
    return resolve(target, f"worlds.KINDS[{kind!r}]")


def make_world(spec: Mapping[str, Any] | Any, field: str = "world"):
    """Build a world from its params: ``kind`` picks the world, the other keys are that world's fields.

    ``spec`` may also be a world already (returned as is) or a world's pydantic params. An unknown or
    missing kind names ``<field>.kind`` and lists the known kinds.
    """
    if isinstance(spec, World):
        return spec
    values = spec.model_dump() if hasattr(spec, "model_dump") else spec
    if not isinstance(values, Mapping):
        raise ParamsError(f"{field}: expected a mapping such as {{kind: tiny}}, got {spec!r}")
    values = dict(values)
    kind = values.get("kind")
    if kind not in KINDS:
        what = "missing" if kind is None else f"unknown kind {kind!r}"
        raise ParamsError(f"{field}.kind: {what}; known kinds: {sorted(KINDS)}")
    return _factory(kind)(values, source=field)


def check_world_spec(spec: Mapping[str, Any]) -> dict:
    """Validate a world spec against its kind's params (the world constructors are lazy: nothing is loaded
    or built), so a typo inside ``world:`` stops ``python -m mfnb run --check`` and the notebook's first cell."""
    make_world(spec)
    return dict(spec)


# a params field holding a world spec: checked when the params are validated, before anything runs
WorldSpec = Annotated[dict, AfterValidator(check_world_spec)]


def has(world, capability: str) -> bool:
    """Whether ``world`` offers ``capability`` (a method, or ``quality`` that is not None)."""
    return getattr(world, capability, None) is not None


def require(world, capability: str, *, field: str, notebook: str | None = None):
    """``world``'s ``capability`` (a bound method or ``quality``), or a ParamsError naming the field that
    asked for it: "world kind 'X' has no <capability> (<what it is>; needed by notebook NN: <field>)"."""
    found = getattr(world, capability, None)
    if found is None:
        what = f"{CAPABILITIES[capability]}; " if capability in CAPABILITIES else ""
        need = f"notebook {notebook}: {field}" if notebook else field
        raise ParamsError(f"world kind {getattr(world, 'kind', type(world).__name__)!r} has no {capability} "
                          f"({what}needed by {need})")
    return found
