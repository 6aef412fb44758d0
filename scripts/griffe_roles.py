"""A griffe extension for the docs site: Sphinx roles in docstrings become links.

The docstrings cross-reference with Sphinx roles (``:class:`Job```), which
mkdocstrings renders as literal text. Each role becomes an autorefs link to the
rendered object it names, found among the public names of the packages on the
API page (a short name is looked up in each package, then in the class whose
docstring holds it), or plain code when it names nothing rendered there (a
private helper, anyio's own types).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(~?)([\w.]+)`")


class RolesToLinks(griffe.Extension):
    """Rewrites the roles of every docstring of a package once it is loaded."""

    def __init__(self) -> None:
        self.public: set[str] = set()  # the ids the API page renders
        self.public_of: dict[str, str] = {}  # an object's own path -> its public path
        self.modules: list[str] = []  # the public modules, where a short name is looked up

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._register(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(partial(self._link, obj), obj.docstring.value)

    def _register(self, module: griffe.Module) -> None:
        self.public.add(module.path)
        self.modules.append(module.path)
        for name in module.exports or ():
            member = module.get_member(name)
            target = member.final_target if isinstance(member, griffe.Alias) else member
            path = f"{module.path}.{name}"
            self.public.add(path)
            self.public_of[target.path] = path
            self.public.update(f"{path}.{sub}" for sub in target.members if not sub.startswith("_"))
        for sub in module.modules.values():
            if not sub.name.startswith("_"):
                self._register(sub)

    def _link(self, obj: griffe.Object, match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2)
        shown = target.rsplit(".", 1)[-1] if short else target
        owner = obj if isinstance(obj, griffe.Class) else obj.parent
        candidates = [target, *(f"{module}.{target}" for module in self.modules)]
        if owner is not None and owner.path in self.public_of:
            candidates.insert(0, f"{self.public_of[owner.path]}.{target}")
        for candidate in candidates:
            if candidate in self.public:
                return f"[`{shown}`][{candidate}]"
        return f"`{shown}`"


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            found += _walk(member)
    return found
