"""HeadMap: which role each attention head (layer, head) plays."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError


@dataclass(frozen=True)
class HeadMap:
    roles: tuple[tuple[str, ...], ...]  # [layer][head] -> role name

    @property
    def num_layers(self) -> int:
        return len(self.roles)

    @property
    def num_heads(self) -> int:
        return len(self.roles[0]) if self.roles else 0

    @classmethod
    def uniform(cls, num_layers: int, num_heads: int, role: str) -> "HeadMap":
        return cls(tuple((role,) * num_heads for _ in range(num_layers)))

    @classmethod
    def by_fraction(cls, num_layers: int, num_heads: int, fractions: dict[str, float]) -> "HeadMap":
        """A placeholder rule until a profile exists: in every layer, split the heads by the given
        fractions (in order), the last role taking the rest; each layer's split is rotated by the layer
        index so that every head index plays every role somewhere in the network."""
        names = list(fractions)
        counts = [math.floor(fractions[n] * num_heads + 0.5) for n in names[:-1]]
        counts.append(num_heads - sum(counts))
        if counts[-1] < 0:
            raise UsageError(f"head fractions {fractions} exceed 100%")
        flat = [n for n, c in zip(names, counts) for _ in range(c)]
        return cls(tuple(tuple(flat[(h + layer) % num_heads] for h in range(num_heads)) for layer in range(num_layers)))

    def heads_of(self, layer: int, role: str) -> list[int]:
        return [h for h, r in enumerate(self.roles[layer]) if r == role]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.roles:
            for r in layer:
                out[r] = out.get(r, 0) + 1
        return out

    def check(self, num_layers: int, num_heads: int, known_roles) -> None:
        if self.num_layers != num_layers or any(len(layer) != num_heads for layer in self.roles):
            shape = f"{self.num_layers} layers x {sorted({len(x) for x in self.roles})} heads"
            raise UsageError(f"HeadMap is {shape}, the model has {num_layers} layers x {num_heads} heads")
        unknown = sorted({r for layer in self.roles for r in layer} - set(known_roles))
        if unknown:
            raise UsageError(f"HeadMap has unknown role(s) {unknown}; the policy knows {sorted(known_roles)}")

    def to_json(self) -> dict:
        return {"num_layers": self.num_layers, "num_heads": self.num_heads, "roles": [list(r) for r in self.roles]}

    @classmethod
    def from_json(cls, data: dict) -> "HeadMap":
        roles = data.get("roles") if isinstance(data, dict) else None
        if not isinstance(roles, list) or not roles or not all(isinstance(x, list) for x in roles):
            raise UsageError("HeadMap JSON needs 'roles': a list (layers) of lists (heads) of role names")
        if not all(isinstance(r, str) for layer in roles for r in layer):
            raise UsageError("HeadMap JSON 'roles' must hold role names (strings)")
        hm = cls(tuple(tuple(layer) for layer in roles))
        if data.get("num_layers", hm.num_layers) != hm.num_layers or any(
            len(layer) != data.get("num_heads", len(layer)) for layer in roles
        ):
            raise UsageError("HeadMap JSON 'roles' does not match its num_layers/num_heads")
        return hm

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "HeadMap":
        from ..utils.files import read_json

        return cls.from_json(read_json(path, "HeadMap"))
