"""Moved: the baseline policies are part of the package now, in :mod:`infobatch.policies`.

This module only re-exports them for scripts written against the first benchmark; select
policies by name with ``infobatch.policies.make_policy`` (see ``POLICIES``).
"""

from __future__ import annotations

from infobatch.policies import DynamicRandom, NoRescale, StaticRandom

__all__ = ["DynamicRandom", "StaticRandom", "NoRescale"]
