"""`openseason pretrain`: a thin wrapper over train.pretrain.pretrain (also under torchrun)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain from a named config on a token directory (Pythia recipe)",
                       description="Pretrain with the Pythia recipe on a token directory from `openseason data "
                                   "tokenize`. Under `torchrun --nproc-per-node N -m openseason pretrain ...` the "
                                   "model is sharded with FSDP2 and every process reads its slice of each step.")
    p.add_argument("--config", required=True, help="a named config (pythia-70m, llama-7b, tiny-neox, ...), a "
                                                    "config.json, or a checkpoint directory to continue")
    p.add_argument("--data", required=True, help="token directory (`openseason data tokenize`)")
    p.add_argument("--out", required=True)
    p.add_argument("--seq-len", type=int, help="tokens per sample (default: the context length)")
    p.add_argument("--micro-batch-size", type=int, default=8, help="samples per process per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the Pythia size's)")
    p.add_argument("--min-lr", type=float, help="end of the cosine (default 0.1 x lr)")
    p.add_argument("--warmup-steps", type=int, help="default 1%% of max steps")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--checkpoint-schedule", choices=["pythia", "none"], default="none",
                   help="pythia: step 0, 1, 2, 4, ..., 512, then every 1000")
    p.add_argument("--save-every", type=int)
    p.add_argument("--keep-last", type=int)
    p.add_argument("--resume", help="'auto' or a step-XXXXXX directory (saved on any number of processes)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device")
    p.add_argument("--precision", choices=["bf16", "fp32"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--max-time", type=float)
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    from .pretrain import pretrain

    result = pretrain(args.config, args.data, args.out, seq_len=args.seq_len, micro_batch_size=args.micro_batch_size,
                      grad_accum=args.grad_accum, max_steps=args.max_steps, lr=args.lr, min_lr=args.min_lr,
                      warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                      checkpoint_schedule=args.checkpoint_schedule, save_every=args.save_every,
                      keep_last=args.keep_last, resume=args.resume, seed=args.seed, device=args.device,
                      precision=args.precision, gradient_checkpointing=args.gradient_checkpointing,
                      max_time=args.max_time)
    if result["main_process"]:
        print(f"pretrained {result['steps']} steps, {result['tokens']:,} tokens in {result['seconds']:.1f}s; "
              f"final loss {result['final_loss']}; checkpoint {result['final']}")
    return 0
