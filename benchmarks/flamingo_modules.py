"""Flamingo's modules vs the released OpenFlamingo ones (open_flamingo.src.helpers, installed --no-deps):
the perceiver resampler and a gated cross-attention block, forward and forward + backward, same weights.

    python benchmarks/flamingo_modules.py [--dim 512] [--dim-visual 256] [--tokens 256] [--batch 4] [--repeat 5]

Prints one JSON line per case: best-of-`repeat` seconds for each side, their ratio (released / ours)
and the largest difference of the outputs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from timing import best_time  # noqa: E402

def released_helpers():
    """open_flamingo/src/helpers.py without the package __init__ (which needs open_clip)."""
    spec = importlib.util.find_spec("open_flamingo")
    if spec is None:
        raise SystemExit("pip install --no-deps open_flamingo einops-exts first")
    root = spec.submodule_search_locations[0]
    for name, path in (("open_flamingo", root), ("open_flamingo.src", f"{root}/src")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
    return importlib.import_module("open_flamingo.src.helpers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dim-visual", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import torch

    from openseason.convert.open_flamingo import flamingo_key
    from openseason.peft.xattn import GatedCrossAttentionBlock, text_time
    from openseason.vision.perceiver import PerceiverResampler

    helpers = released_helpers()
    torch.manual_seed(0)
    theirs_p = helpers.PerceiverResampler(dim=args.dim_visual, max_num_media=args.images)
    ours_p = PerceiverResampler(args.dim_visual, max_num_media=args.images)
    ours_p.load_state_dict({flamingo_key("perceiver." + k)[len("perceiver."):]: v
                            for k, v in theirs_p.state_dict().items()})
    theirs_x = helpers.GatedCrossAttentionBlock(dim=args.dim, dim_visual=args.dim_visual)
    with torch.no_grad():
        theirs_x.attn_gate.fill_(0.5)
        theirs_x.ff_gate.fill_(0.5)
    ours_x = GatedCrossAttentionBlock(args.dim, args.dim_visual)
    ours_x.load_state_dict({flamingo_key("lang_encoder.gated_cross_attn_layers.0." + k)[len("blocks.0.xattn."):]: v
                            for k, v in theirs_x.state_dict().items()})

    feats = torch.randn(args.batch, args.images, 1, args.patches, args.dim_visual)
    x = torch.randn(args.batch, args.tokens, args.dim)
    loc = torch.zeros(args.batch, args.tokens, dtype=torch.bool)
    for j in range(args.images):
        loc[:, j * args.tokens // args.images] = True
    time_ = text_time(loc)
    latents = theirs_p(feats).detach()

    cases = {
        "perceiver forward": (lambda: ours_p(feats), lambda: theirs_p(feats)),
        "gated xattn forward": (lambda: ours_x(x, latents, time_), lambda: theirs_x(x, latents, media_locations=loc)),
    }
    for name, (ours, theirs) in cases.items():
        with torch.no_grad():
            diff = float((ours() - theirs()).abs().max())
            t_ours, t_theirs = best_time(ours, args.repeat, warmup=True), best_time(theirs, args.repeat, warmup=True)
        print(json.dumps({"case": name, "ours_s": round(t_ours, 5), "released_s": round(t_theirs, 5),
                          "released_over_ours": round(t_theirs / t_ours, 2), "max_abs_diff": diff}), flush=True)
    for name, (ours, theirs) in cases.items():
        t_ours = best_time(lambda: ours().sum().backward(), args.repeat, warmup=True)
        t_theirs = best_time(lambda: theirs().sum().backward(), args.repeat, warmup=True)
        print(json.dumps({"case": name.replace("forward", "forward + backward"), "ours_s": round(t_ours, 5),
                          "released_s": round(t_theirs, 5), "released_over_ours": round(t_theirs / t_ours, 2)}),
              flush=True)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), **vars(args)}))


if __name__ == "__main__":
    main()
