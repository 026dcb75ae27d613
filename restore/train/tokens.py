"""Train APS's token prior: first the FSQ tokenizer, then the masked-token transformer; resumable.

    python -m restore.train.tokens --data ../shared/data/BSD432-train --out models/tokens-natural \
        --ckpt runs/tokens/last.pt --tokenizer-steps 6000 --transformer-steps 6000

Tokenizer: L1 + 0.1 (1 - MS-SSIM) on 64x64 crops (LPIPS's backbone cannot be fetched offline), Adam 1e-3 with cosine
decay. Transformer: MaskGIT training on the frozen tokenizer's tokens of 64x64 crops (16x16 grids): mask ratio
cos(pi r / 2), r ~ U(0, 1), cross-entropy on masked positions with label smoothing 0.1, AdamW 3e-4, weight decay
0.05. The card records the tokenizer's reconstruction PSNR and the transformer's masked-token accuracy and
perplexity on held-out crops.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from restore.files import save_atomic, write_json_atomic
from restore.priors.tokens import TokenPrior
from restore.train.common import (Checkpointer, Clock, Deadline, centre_crops, cosine_lr, half_state_dict,
                                  list_images, load_uint8_images, random_patches, training_command, training_device,
                                  warm_start)


@torch.no_grad()
def evaluate(prior: TokenPrior, val: torch.Tensor, gen_seed: int = 0) -> dict:
    prior.eval()
    rec = prior.tokenizer(val).clamp(0, 1)
    psnr = float((10 * torch.log10(1 / ((rec - val) ** 2).flatten(1).mean(1))).mean())
    tokens = prior.tokenizer.encode(val)
    g = torch.Generator().manual_seed(gen_seed)
    mask = (torch.rand(tokens.shape, generator=g) < 0.5).to(tokens.device)
    inp = tokens.masked_fill(mask, prior.transformer.mask_id)
    logits = prior.transformer(inp).view(*tokens.shape, -1)
    ce = F.cross_entropy(logits[mask], tokens[mask])
    acc = float((logits[mask].argmax(-1) == tokens[mask]).float().mean())
    prior.train()
    return {"tokenizer_psnr": round(psnr, 3), "masked_token_accuracy_50pct": round(acc, 4),
            "perplexity_50pct": round(float(ce.exp()), 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--out", default="models/tokens-natural")
    ap.add_argument("--ckpt", default="runs/tokens/last.pt")
    ap.add_argument("--tokenizer-steps", type=int, default=6000)
    ap.add_argument("--transformer-steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--ch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--val-images", type=int, default=8)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stop-after", type=float, default=None, help="stop this run after N minutes (still resumable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tf-lr", type=float, default=3e-4, help="the transformer's learning rate")
    ap.add_argument("--tf-cosine-to", type=float, default=None,
                    help="decay the transformer's lr along a cosine from --tf-lr, at the step this decay started "
                         "(this run's first, or the decaying run this one resumes), to this value at the last step "
                         "(default: constant)")
    ap.add_argument("--from-scratch", action="store_true", help="ignore shipped weights when no checkpoint exists")
    args = ap.parse_args(argv)
    dev = training_device(args.device, args.threads)
    deadline = Deadline(args.stop_after)
    from pytorch_msssim import ms_ssim

    files = list_images(args.data)
    train_imgs = load_uint8_images(files[:-args.val_images])
    val = centre_crops(load_uint8_images(files[-args.val_images:]), args.patch).to(dev)
    torch.manual_seed(args.seed)  # initial weights, so a run is reproducible
    prior = TokenPrior({"ch": args.ch}, {"dim": args.dim, "depth": args.depth, "heads": args.heads,
                                         "grid": args.patch // 4}).to(dev)
    opt_tok = torch.optim.Adam(prior.tokenizer.parameters(), lr=1e-3)
    opt_tf = torch.optim.AdamW(prior.transformer.parameters(), lr=args.tf_lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    step, prev = 0, 0.0
    command = training_command("restore.train.tokens", argv)
    ckpt = Checkpointer(args.ckpt, model=prior, opt_tok=opt_tok, opt_tf=opt_tf, rng=gen)
    decay_from = None
    if (ck := ckpt.resume(dev)) is not None:
        step, prev, command = ck["step"], ck["seconds"], ck.get("command", command)
        decay_from = ck.get("decay_from")
    elif not args.from_scratch and (card := warm_start(args.out, prior)) is not None:
        steps = card.get("steps", {})
        step = int(steps.get("tokenizer", 0)) + int(steps.get("transformer", 0))
        prev, command = 3600 * float(card.get("wall_time_hours", 0)), card.get("command", command)
    clock = Clock(prev)
    total = args.tokenizer_steps + args.transformer_steps
    if decay_from is None:
        decay_from = max(step, args.tokenizer_steps)

    def checkpoint():
        # the decay's start travels with the checkpoint only while a decay runs: a constant-lr run resumed with
        # --tf-cosine-to starts its decay where it resumes
        ckpt.save(step=step, seconds=clock.total, command=command,
                  decay_from=decay_from if args.tf_cosine_to is not None else None)

    def transformer_lr(s: int) -> float:
        if args.tf_cosine_to is None or total <= decay_from:
            return args.tf_lr
        return cosine_lr(s - decay_from, total - decay_from, args.tf_lr, args.tf_cosine_to)

    prior.train()
    while step < total:
        x = random_patches(train_imgs, args.batch, args.patch, gen).to(dev)
        if step < args.tokenizer_steps:
            lr = cosine_lr(step, args.tokenizer_steps, 1e-3, 0.0)
            for g in opt_tok.param_groups:
                g["lr"] = max(lr, 1e-5)
            rec = prior.tokenizer(x)
            loss = (rec - x).abs().mean()
            if args.patch >= 64:  # MS-SSIM needs room for its 5 scales
                loss = loss + 0.1 * (1 - ms_ssim(rec.clamp(0, 1), x, data_range=1.0, win_size=3))
            opt_tok.zero_grad(set_to_none=True)
            loss.backward()
            opt_tok.step()
        else:
            for g in opt_tf.param_groups:
                g["lr"] = transformer_lr(step)
            with torch.no_grad():
                tokens = prior.tokenizer.encode(x)
            r = torch.rand(args.batch, 1, 1, generator=gen)
            ratio = torch.cos(math.pi / 2 * r).clamp_min(1 / tokens[0].numel())
            mask = (torch.rand(tokens.shape, generator=gen) < ratio).to(dev)
            logits = prior.transformer(tokens.masked_fill(mask, prior.transformer.mask_id)).view(*tokens.shape, -1)
            loss = F.cross_entropy(logits[mask], tokens[mask], label_smoothing=0.1)
            opt_tf.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prior.transformer.parameters(), 1.0)
            opt_tf.step()
        step += 1
        if step % args.ckpt_every == 0 or step == total:
            checkpoint()
            print(f"step {step} ({'tokenizer' if step <= args.tokenizer_steps else 'transformer'}) "
                  f"loss {loss.item():.4f}", flush=True)
        if deadline.passed:
            break
    checkpoint()
    quality = evaluate(prior, val)
    out = Path(args.out)
    save_atomic({"config": prior.config, "state_dict": half_state_dict(prior.state_dict())}, out.with_suffix(".pt"))
    write_json_atomic({"name": out.name, "kind": "tokens", "architecture": f"FSQ tokenizer levels "
                       f"{prior.tokenizer.levels} ({prior.tokenizer.n_codes} codes), 4x downsampling, ch {args.ch}; "
                       f"masked-token transformer dim {args.dim}, depth {args.depth}, heads {args.heads}",
                       "parameters": sum(p.numel() for p in prior.parameters()),
                       "training_data": f"{Path(args.data).name} ({len(files) - args.val_images} images; last "
                                        f"{args.val_images} held out)",
                       "steps": {"tokenizer": min(step, args.tokenizer_steps),
                                 "transformer": max(0, step - args.tokenizer_steps)},
                       "batch": args.batch, "hardware": args.device,
                       "transformer_lr": args.tf_lr if args.tf_cosine_to is None else
                       f"cosine {args.tf_lr:g} -> {args.tf_cosine_to:g} from step {decay_from} to {total}",
                       "wall_time_hours": round(clock.total / 3600, 2), "command": command,
                       "held_out_64px": quality, "weights_dtype": "float16"}, out.with_suffix(".json"))
    print(f"exported {out}.pt {quality}", flush=True)


if __name__ == "__main__":
    main()
