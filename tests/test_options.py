"""Option dataclasses -> CLI flags (openseason/options.py): a flag that is on by default can be
turned off from the command line, and a flag not given stays "not given"."""
from __future__ import annotations

from openseason.cli import build_parser
from openseason.consistency.options import ConsistencyOptions
from openseason.options import given_options


def test_flags_on_by_default_have_a_no_form():
    parser = build_parser()
    off = parser.parse_args(["consistency", "train", "--data", "digits", "--out", "o", "--no-progress",
                             "--no-tensorboard"])
    assert given_options(off, ConsistencyOptions)["progress"] is False
    assert given_options(off, ConsistencyOptions)["tensorboard"] is False
    unset = parser.parse_args(["consistency", "train", "--data", "digits", "--out", "o"])
    assert given_options(unset, ConsistencyOptions)["progress"] is None      # not given: the default applies
    assert parser.parse_args(["vision", "train-clip", "--data", "d", "--out", "o", "--no-progress"]).progress is False
