"""Train the noise-conditional denoiser (score prior) by denoising score matching; resumable.

    python -m restore.train.denoiser --data ../shared/data/BSD432-train --out models/score-natural \
        --steps 150000 --ckpt runs/denoiser/last.pt

Every ``--ckpt-every`` steps the full state (weights, EMA, optimiser, step, RNG, wall time, log) is written
atomically to ``--ckpt``; rerunning the same command resumes from it. ``--export`` (or reaching ``--steps``)
writes the EMA weights in float16 to ``OUT.pt`` and the model card ``OUT.json``.

Noise levels: half uniform on [0.02, 0.25] (the denoising range), half log-uniform on [0.002, 2.0] (the
diffusion range RED-Diff and deepinv's samplers visit). Loss: EDM weighting ``(s^2 + s_d^2) / (s * s_d)^2``
times the per-pixel squared error of ``D(x + s n, s)`` against ``x``, i.e. equal weight to every noise level.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch

from restore.files import save_atomic, write_json_atomic
from restore.priors.denoiser import SIGMA_DATA, ScoreDenoiser, count_parameters
from restore.train.common import (EMA, Checkpointer, Clock, centre_crops, cosine_lr, half_state_dict, list_images,
                                  load_uint8_images, random_patches, training_command, training_device, warm_start)

VAL_SIGMAS_255 = (15, 25, 50)


def sample_sigmas(batch: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(batch, generator=gen)
    uniform = 0.02 + 0.23 * torch.rand(batch, generator=gen)
    logu = torch.exp(math.log(0.002) + (math.log(2.0) - math.log(0.002)) * torch.rand(batch, generator=gen))
    return torch.where(u < 0.5, uniform, logu)


@torch.no_grad()
def validate(model: torch.nn.Module, val: torch.Tensor, seed: int = 0) -> dict:
    """PSNR (dB) of D(x + s n, s) on the held-out crops, per sigma (on the /255 scale)."""
    gen = torch.Generator().manual_seed(seed)
    res = {}
    for s255 in VAL_SIGMAS_255:
        s = s255 / 255
        noise = torch.randn(val.shape, generator=gen).to(val.device)
        mses = []
        for i in range(0, len(val), 4):
            x = val[i:i + 4]
            out = model(x + s * noise[i:i + 4], s).clamp(0, 1)
            mses.append(((out - x) ** 2).flatten(1).mean(1))
        mse = torch.cat(mses)
        res[str(s255)] = round(float((10 * torch.log10(1 / mse)).mean()), 3)
    return res


def grey_consistent_noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Unit Gaussian noise like ``x``; grey patches (three equal channels) get one noise field copied to all three,
    which is what a grey image looks like to the network at run time (it is expanded to 3 equal channels)."""
    noise = torch.randn(x.shape, generator=gen)
    grey = ((x[:, 0] == x[:, 1]) & (x[:, 1] == x[:, 2])).flatten(1).all(1)
    noise[grey] = noise[grey, :1].expand(-1, 3, -1, -1)
    return noise


def export(model_state: dict, cfg: dict, out: Path, meta: dict):
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"config": cfg, "state_dict": half_state_dict(model_state)}, out.with_suffix(".pt"))
    write_json_atomic(meta, out.with_suffix(".json"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--out", default="models/score-natural", help="output stem: OUT.pt + OUT.json")
    ap.add_argument("--ckpt", default="runs/denoiser/last.pt")
    ap.add_argument("--steps", type=int, default=150_000, help="total steps (the cosine schedule spans them)")
    ap.add_argument("--stop-after", type=float, default=None, help="stop this run after N minutes (still resumable)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--grey-fraction", type=float, default=0.1, help="share of patches made grey (one noise field)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--nc", type=int, nargs=4, default=[32, 64, 128, 256])
    ap.add_argument("--nb", type=int, default=2)
    ap.add_argument("--val-images", type=int, default=8, help="last N training files held out for validation")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--val-every", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-bf16", action="store_true", help="disable bfloat16 autocast (2.3x slower on AVX512 CPUs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-scratch", action="store_true", help="ignore shipped weights when no checkpoint exists")
    ap.add_argument("--export", action="store_true", help="only export the current checkpoint and exit")
    args = ap.parse_args(argv)
    dev = training_device(args.device, args.threads)

    files = list_images(args.data)
    train_files, val_files = files[:-args.val_images], files[-args.val_images:]
    t0 = time.time()
    train_imgs = load_uint8_images(train_files)
    val = centre_crops(load_uint8_images(val_files), 128).to(dev)
    print(f"loaded {len(train_imgs)} training and {len(val)} validation images in {time.time() - t0:.1f}s", flush=True)

    torch.manual_seed(args.seed)  # initial weights, so a run is reproducible
    model = ScoreDenoiser(nc=args.nc, nb=args.nb).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    ema = EMA(model, args.ema)
    gen = torch.Generator().manual_seed(args.seed)
    step, log, prev_seconds = 0, [], 0.0
    train_command = training_command("restore.train.denoiser", argv)
    ckpt = Checkpointer(args.ckpt, model=model, opt=opt, ema=ema, rng=gen)
    if (ck := ckpt.resume(dev)) is not None:
        step, log, prev_seconds = ck["step"], ck["log"], ck["seconds"]
        train_command = ck.get("train_command", train_command)
    elif not args.from_scratch and (card := warm_start(args.out, model, ema)) is not None:
        step, log = int(card.get("steps", 0)), card.get("validation_log", [])
        prev_seconds = 3600 * float(card.get("wall_time_hours", 0))
        train_command = card.get("command", train_command)
    clock = Clock(prev_seconds)

    def checkpoint():
        ckpt.save(step=step, log=log, seconds=clock.total, args=vars(args), train_command=train_command)

    def do_export():
        ema_model = ScoreDenoiser(nc=args.nc, nb=args.nb).to(dev)
        ema_model.load_state_dict(ema.shadow)
        ema_model.eval()
        val_psnr = validate(ema_model, val)
        meta = {
            "name": Path(args.out).name, "kind": "denoiser",
            "architecture": f"DRUNet (deepinv) nc={args.nc} nb={args.nb}, EDM preconditioning (sigma_data={SIGMA_DATA}), "
                            "noise-level map input c_noise=log(sigma)/4, grey via 3 equal channels",
            "parameters": count_parameters(ema_model),
            "training_data": f"{Path(args.data).name} ({len(train_files)} images; last {len(val_files)} held out for validation)",
            "eval_sets_excluded": ["CBSD68", "BSD68", "Set12", "CC15", "SIDD-val-80", "RNI15"],
            "steps": step, "batch": args.batch, "patch": args.patch, "lr": args.lr, "ema": args.ema,
            "sigma_range": [0.002, 2.0], "wall_time_hours": round(clock.total / 3600, 2),
            "hardware": f"{platform.processor() or platform.machine()}, {args.threads} threads, {args.device}, "
                        f"bf16 autocast={not args.no_bf16}",
            "validation_psnr_db": {"held_out_128px_crops": val_psnr},
            "command": train_command,
            "validation_log": log,
            "weights_dtype": "float16",
        }
        export(ema.shadow, model.config, Path(args.out), meta)
        print(f"exported {args.out}.pt  val PSNR {val_psnr}", flush=True)

    if args.export:
        do_export()
        return

    model.train()
    use_bf16 = not args.no_bf16
    run_start = time.time()
    t_last, loss_acc = time.time(), 0.0
    while step < args.steps:
        lr = cosine_lr(step, args.steps, args.lr, 1e-6)
        for g in opt.param_groups:
            g["lr"] = lr
        x = random_patches(train_imgs, args.batch, args.patch, gen, grey_fraction=args.grey_fraction)
        s = sample_sigmas(args.batch, gen)
        noise = grey_consistent_noise(x, gen)
        x, s, noise = x.to(dev), s.to(dev), noise.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(x + s.view(-1, 1, 1, 1) * noise, s)
        weight = (s**2 + SIGMA_DATA**2) / (s * SIGMA_DATA) ** 2
        loss = (weight * ((out.float() - x) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema.update(model, step)
        loss_acc += loss.item()
        if step % args.ckpt_every == 0:
            checkpoint()
            dt = time.time() - t_last
            print(f"step {step} loss {loss_acc / args.ckpt_every:.4f} lr {lr:.2e} {1000 * dt / args.ckpt_every:.0f} ms/step",
                  flush=True)
            t_last, loss_acc = time.time(), 0.0
        if step % args.val_every == 0:
            ema_model = ScoreDenoiser(nc=args.nc, nb=args.nb).to(dev)
            ema_model.load_state_dict(ema.shadow)
            ema_model.eval()
            v = validate(ema_model, val)
            log.append({"step": step, "val_psnr": v, "hours": round(clock.total / 3600, 3)})
            print(f"step {step} EMA val PSNR {v}", flush=True)
        if args.stop_after and time.time() - run_start > 60 * args.stop_after:
            break
    checkpoint()
    do_export()


if __name__ == "__main__":
    main()
