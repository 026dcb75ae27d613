"""Fine-tune APS's tokenizer decoder on frozen tokens, for PSNR; resumable.

    python -m restore.train.token_decoder --data ../shared/data/BSD432-train --from models/tokens-natural \
        --out runs/token_decoder/tokens-natural --ckpt runs/token_decoder/last.pt --steps 20000 --threads 1

Why the decoder alone: the encoder and the FSQ grid define the tokens the masked-token transformer was trained on,
so freezing them keeps the transformer valid and only the map from tokens to pixels improves (APS's outputs, and the
tokenizer's ceiling on them, are the decoder's). The tokenizer was trained 8 000 steps for L1 + MS-SSIM; this stage
trains for mean squared error (what PSNR and APS's MMSE read) with Adam and a cosine decay, keeping an EMA of the
decoder, which is what gets exported. The card keeps the shipped prior's fields and adds a ``decoder_finetune`` entry
with its validation log (PSNR of the EMA decoder on held-out crops, 64 px as the card's, and 128 px).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from restore.files import save_atomic, write_json_atomic
from restore.metrics import psnr
from restore.priors.tokens import TokenPrior
from restore.train.common import (EMA, Checkpointer, Clock, Deadline, centre_crops, cosine_lr, half_state_dict,
                                  list_images, load_uint8_images, random_patches, training_command, training_device)


@torch.no_grad()
def decoder_psnr(prior: TokenPrior, decoder_state: dict | None, val: torch.Tensor, chunk: int = 8) -> float:
    """Mean PSNR (dB) of the tokenizer's reconstruction of ``val`` (N, 3, H, W) in [0, 1], with ``decoder_state`` (the
    EMA weights) loaded into a copy of the tokenizer when given."""
    tokenizer = prior.tokenizer
    if decoder_state is not None:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.dec.load_state_dict(decoder_state)
    values = [psnr(tokenizer(val[i:i + chunk]), val[i:i + chunk]) for i in range(0, len(val), chunk)]
    return round(float(torch.cat(values).mean()), 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--from", dest="source", default="models/tokens-natural", help="the shipped token prior (stem)")
    ap.add_argument("--out", default="runs/token_decoder/tokens-natural", help="output stem: OUT.pt + OUT.json")
    ap.add_argument("--ckpt", default="runs/token_decoder/last.pt")
    ap.add_argument("--steps", type=int, default=20000, help="total steps (the cosine decay spans them)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-end", type=float, default=1e-6)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--val-images", type=int, default=8, help="last N training files held out (as the tokenizer's)")
    ap.add_argument("--val-sizes", default="64,128", help="held-out centre-crop sizes (px) the log reports")
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stop-after", type=float, default=None, help="stop this run after N minutes (still resumable)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    dev = training_device(args.device, args.threads)
    deadline = Deadline(args.stop_after)

    from restore.priors.registry import load_checkpoint
    shipped = load_checkpoint(Path(args.source).with_suffix(".pt"))
    card_path = Path(args.source).with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    prior = TokenPrior(shipped["config"]["tokenizer"], shipped["config"]["transformer"]).to(dev)
    prior.load_state_dict({k: v.float() for k, v in shipped["state_dict"].items()})
    for p in prior.parameters():
        p.requires_grad_(False)
    for p in prior.tokenizer.dec.parameters():
        p.requires_grad_(True)

    files = list_images(args.data)
    train_imgs = load_uint8_images(files[:-args.val_images])
    held_out = load_uint8_images(files[-args.val_images:])
    val = {size: centre_crops(held_out, int(size)).to(dev) for size in args.val_sizes.split(",")}

    opt = torch.optim.Adam(prior.tokenizer.dec.parameters(), lr=args.lr)
    ema = EMA(prior.tokenizer.dec, args.ema)
    gen = torch.Generator().manual_seed(args.seed)
    command = training_command("restore.train.token_decoder", argv)
    ckpt = Checkpointer(args.ckpt, decoder=prior.tokenizer.dec, opt=opt, ema=ema, rng=gen)
    step, prev, log = 0, 0.0, []
    if (ck := ckpt.resume(dev)) is not None:
        step, prev, log, command = ck["step"], ck["seconds"], ck["log"], ck.get("command", command)
    else:
        log = [{"step": 0, "val_psnr": {k: decoder_psnr(prior, None, v) for k, v in val.items()}, "hours": 0.0}]
        print(f"shipped decoder: {log[0]['val_psnr']}", flush=True)
    clock = Clock(prev)

    def checkpoint():
        ckpt.save(step=step, seconds=clock.total, log=log, command=command)

    prior.tokenizer.dec.train()
    while step < args.steps and not deadline.passed:
        x = random_patches(train_imgs, args.batch, args.patch, gen).to(dev)
        with torch.no_grad():
            codes = prior.tokenizer.codes(x)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, args.lr_end)
        loss = ((prior.tokenizer.decode_codes(codes) - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema.update(prior.tokenizer.dec, step)
        if step % args.val_every == 0 or step == args.steps:
            log.append({"step": step, "val_psnr": {k: decoder_psnr(prior, ema.shadow, v) for k, v in val.items()},
                        "hours": round(clock.total / 3600, 3)})
            print(f"step {step} loss {loss.item():.5f} val {log[-1]['val_psnr']}", flush=True)
        if step % args.ckpt_every == 0:
            checkpoint()
    checkpoint()
    export(prior, ema, card, log, args, step, clock.total, command)


def export(prior: TokenPrior, ema: EMA, card: dict, log: list, args, step: int, seconds: float, command: str):
    """Write OUT.pt (the shipped prior with the EMA decoder, float16) and OUT.json (the card plus this stage)."""
    state = prior.state_dict()
    state.update({f"tokenizer.dec.{k}": v for k, v in ema.shadow.items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"config": prior.config, "state_dict": half_state_dict(state)}, out.with_suffix(".pt"))
    new_card = json.loads(json.dumps(card))
    new_card["name"] = out.name
    new_card["decoder_finetune"] = {
        "what": "decoder only, encoder, FSQ grid and transformer frozen (the tokens are unchanged)",
        "loss": "mean squared error", "steps": step, "batch": args.batch, "patch": args.patch,
        "lr": f"cosine {args.lr:g} -> {args.lr_end:g} over {args.steps}", "ema": args.ema,
        "hardware": f"{args.device}, {args.threads} thread(s)", "wall_time_hours": round(seconds / 3600, 2),
        "command": command, "validation_log": log}
    if "64" in log[-1]["val_psnr"]:
        new_card["held_out_64px"] = dict(card.get("held_out_64px", {}), tokenizer_psnr=log[-1]["val_psnr"]["64"])
    write_json_atomic(new_card, out.with_suffix(".json"))
    print(f"exported {out}.pt: held-out tokenizer PSNR {log[0]['val_psnr']} -> {log[-1]['val_psnr']}", flush=True)


if __name__ == "__main__":
    main()
