"""One small module per dataset; `SOURCES` maps the name used on the command line to the module."""
from __future__ import annotations

from ...errors import OpenseasonError
from . import alpaca, coco, dolly, dolly_hhrlhf, generic, hh_rlhf, llava, longform, oasst, redpajama, sharegpt

SOURCES = {m.NAME: m for m in (dolly, dolly_hhrlhf, alpaca, longform, hh_rlhf, oasst, sharegpt, generic, redpajama,
                               llava, coco)}
IMAGE_SOURCES = ("llava", "coco")  # sources whose rows name image files (--image-root)
SOURCES["oasst2"] = oasst  # same formats
SOURCES["json"] = SOURCES["jsonl"] = SOURCES["csv"] = SOURCES["parquet"] = generic


def get_source(name: str):
    if name not in SOURCES:
        raise OpenseasonError(f"unknown data source {name!r}",
                              hint=f"choose one of: {', '.join(SOURCES)}, or hub (a Hugging Face dataset id)")
    return SOURCES[name]
