"""CLI verbs of the consistency stage: `openseason consistency train` and `openseason consistency sample`
(thin wrappers over training.train_consistency and run.sample_run; train's flags come from
options.ConsistencyOptions)."""
from __future__ import annotations

from ..errors import ConfigError
from ..options import add_arguments, given_options
from .options import ConsistencyOptions


def _train(args) -> int:
    from .training import train_consistency

    result = train_consistency(args.data, args.out, resume=args.resume, overwrite=args.overwrite,
                               **given_options(args, ConsistencyOptions))
    print(f"trained {result['steps']} steps in {result['seconds']:.1f}s; final loss {result['final_loss']}; "
          f"checkpoint {result['final']}")
    return 0


def _parse_sigmas(text):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sigmas must be a comma list of numbers, not {text!r}") from None


def _sample(args) -> int:
    from .run import sample_run

    result = sample_run(args.run, steps=args.steps, num=args.num, out=args.out, sigmas=_parse_sigmas(args.sigmas),
                        seed=args.seed, device=args.device)
    print(f"wrote {result['num']} samples ({result['method']}, {result['steps']} step(s)) to {result['out']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("consistency", help="image generation with consistency models: train, sample",
                       description="Consistency models (Song et al. 2023): one-step image generation.")
    verbs = p.add_subparsers(dest="consistency_command", metavar="VERB")
    verbs.required = True

    t = verbs.add_parser("train", help="train a consistency model (ct, cd, ict) or the edm teacher",
                         description="Train on --data (digits, fashion-mnist, or a folder of PNG/JPEG images); "
                                     "checkpoints go to OUT/step-XXXXXX and OUT/final, with metrics.csv, "
                                     "tensorboard/, samples/step-XXXXXX.png and loss.png.")
    t.add_argument("--data", required=True, help="digits | fashion-mnist | DIR")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", choices=("auto",), help="continue from the newest checkpoint under --out")
    t.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    add_arguments(t, ConsistencyOptions)
    t.set_defaults(func=_train)

    s = verbs.add_parser("sample", help="sample a PNG grid from a run in 1, 2, 4, ... steps",
                         description="Sample --num images from RUN's EMA weights in --steps network evaluations "
                                     "(an edm run: Heun on --steps Karras levels) and write one PNG grid.")
    s.add_argument("run", help="a run directory of `openseason consistency train`")
    s.add_argument("--steps", type=int, default=1, help="network evaluations (default 1)")
    s.add_argument("--num", type=int, default=64, help="images (default 64)")
    s.add_argument("--out", default="grid.png", help="PNG file (default grid.png)")
    s.add_argument("--sigmas", help="time points, comma list, one per step (default: 80 then the paper's points "
                                    "on a 40-level Karras grid, e.g. 80,1.38 for 2 steps)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", help="cpu, cuda (default: cuda if available)")
    s.set_defaults(func=_sample)
