"""What-if for RESULTS.md: bridge's config read with libyaml (yaml.CSafeLoader).

    PYTHONPATH=benchmarks/whatif python benchmarks/run.py --passes 1,3 --output ...

Every yaml.compose(..., Loader=yaml.SafeLoader) in the process uses the C loader instead: the
one-line change recommended for bridge/yamldoc.py, measured without editing it.
"""

from __future__ import annotations

import yaml

_compose = yaml.compose


def _compose_with_libyaml(stream, Loader=yaml.SafeLoader):  # noqa: N803 (yaml's own name)
    if Loader is yaml.SafeLoader and hasattr(yaml, "CSafeLoader"):
        Loader = yaml.CSafeLoader  # noqa: N806
    return _compose(stream, Loader=Loader)


yaml.compose = _compose_with_libyaml
