"""Train PMRF's rectified-flow velocity network; resumable.

    python -m restore.train.flow --data ../shared/data/BSD432-train --denoiser score-natural \
        --out models/flow-natural --ckpt runs/flow/last.pt --steps 30000

Source points are the posterior means our pipeline produces, plus source noise sigma_s (PMRF's controlled-denoising
value 0.025): half the batch is Gaussian denoising, mean = D(x + s n, s) from the score prior with s ~ U[0.02, 0.2];
the other half stands for the over-smooth means of deblurring / SR / inpainting solvers: D applied to a Gaussian-
blurred (sigma ~ U[0.5, 2.5] px), lightly noisy (0.01) copy, at s = 0.05. That proxy, not the solvers' exact
outputs, is what the card says the flow was trained on. Loss: ||v(x_t, t) - (x - z0)||^2 with
x_t = t x + (1 - t) z0 and stratified t ~ U[0, 1] (PMRF's MMSE-rectified-flow objective); Adam, EMA 0.999.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from restore.files import save_atomic, write_json_atomic
from restore.priors.flow import FlowNet
from restore.train.common import (EMA, Checkpointer, Clock, Deadline, centre_crops, cosine_lr, half_state_dict,
                                  list_images, load_uint8_images, random_patches, training_command, training_device,
                                  warm_start)


@torch.no_grad()
def source_means(x: torch.Tensor, den, gen: torch.Generator) -> torch.Tensor:
    """Posterior-mean-like starting images for a batch of clean patches (see the module docstring)."""
    from deepinv.physics.functional import conv2d
    from deepinv.physics.functional import gaussian_blur

    b, dev = x.shape[0], x.device
    half = b // 2
    s = (0.02 + 0.18 * torch.rand(half, generator=gen)).to(dev)
    noisy = x[:half] + s.view(-1, 1, 1, 1) * torch.randn(x[:half].shape, generator=gen).to(dev)
    out = [den(noisy, s)]
    if b - half:
        blurred = []
        for i in range(half, b):
            sb = float(0.5 + 2.0 * torch.rand(1, generator=gen))
            k = gaussian_blur(sigma=(sb, sb)).to(dev)
            blurred.append(conv2d(x[i:i + 1], k, padding="reflect"))
        blurred = torch.cat(blurred)
        blurred = blurred + 0.01 * torch.randn(blurred.shape, generator=gen).to(dev)
        out.append(den(blurred, 0.05))
    return torch.cat(out).clamp(0, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--denoiser", default="score-natural", help="registered denoiser prior giving the means")
    ap.add_argument("--out", default="models/flow-natural")
    ap.add_argument("--ckpt", default="runs/flow/last.pt")
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--cosine-to", type=float, default=None,
                    help="decay the lr along a cosine from --lr at --cosine-start to this value at --steps (default: "
                         "constant lr): a continuation's final tail")
    ap.add_argument("--cosine-start", type=int, default=0, help="step where the cosine decay begins")
    ap.add_argument("--sigma-s", type=float, default=0.025)
    ap.add_argument("--nc", type=int, nargs=4, default=[32, 64, 128, 256])
    ap.add_argument("--nb", type=int, default=2)
    ap.add_argument("--val-images", type=int, default=8)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stop-after", type=float, default=None, help="stop this run after N minutes (still resumable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-scratch", action="store_true", help="ignore shipped weights when no checkpoint exists")
    ap.add_argument("--export", action="store_true")
    args = ap.parse_args(argv)
    dev = training_device(args.device, args.threads)
    deadline = Deadline(args.stop_after)
    from restore.priors import registry

    den = registry.load(args.denoiser).module.to(dev)
    files = list_images(args.data)
    train_imgs = load_uint8_images(files[:-args.val_images])
    val = centre_crops(load_uint8_images(files[-args.val_images:]), 64).to(dev)
    torch.manual_seed(args.seed)  # initial weights, so a run is reproducible
    net = FlowNet(args.nc, args.nb).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    ema = EMA(net, 0.999)
    gen = torch.Generator().manual_seed(args.seed)
    step, prev = 0, 0.0
    command = training_command("restore.train.flow", argv)
    ckpt = Checkpointer(args.ckpt, model=net, opt=opt, ema=ema, rng=gen)
    if (ck := ckpt.resume(dev)) is not None:
        step, prev, command = ck["step"], ck["seconds"], ck.get("command", command)
    elif not args.from_scratch and (card := warm_start(args.out, net, ema)) is not None:
        step, prev = int(card.get("steps", 0)), 3600 * float(card.get("wall_time_hours", 0))
        command = card.get("command", command)
    clock = Clock(prev)

    def checkpoint():
        ckpt.save(step=step, seconds=clock.total, command=command)

    @torch.no_grad()
    def evaluate() -> dict:
        """PSNR of the mean and of the 25-step flow output on the held-out crops (denoising sigma 25/255)."""
        model = FlowNet(args.nc, args.nb).to(dev)
        model.load_state_dict(ema.shadow)
        model.eval()
        g = torch.Generator().manual_seed(123)
        s = 25 / 255
        mean = den(val + s * torch.randn(val.shape, generator=g).to(dev), s).clamp(0, 1)
        z = mean + args.sigma_s * torch.randn(val.shape, generator=g).to(dev)
        for i in range(25):
            z = z + model(z, i / 25) / 25
        p = lambda a: float((10 * torch.log10(1 / ((a.clamp(0, 1) - val) ** 2).flatten(1).mean(1))).mean())  # noqa
        return {"psnr_mean": round(p(mean), 3), "psnr_flow": round(p(z), 3)}

    def export():
        rd = evaluate()
        out = Path(args.out)
        save_atomic({"config": net.config, "state_dict": half_state_dict(ema.shadow)}, out.with_suffix(".pt"))
        write_json_atomic({"name": out.name, "kind": "flow", "architecture": f"DRUNet nc={args.nc} nb={args.nb} "
                           "with t as conditioning map (rectified-flow velocity)",
                           "parameters": sum(p.numel() for p in net.parameters()), "sigma_s": args.sigma_s,
                           "mean_denoiser": args.denoiser,
                           "training_data": f"{Path(args.data).name} ({len(files) - args.val_images} images); sources:"
                                            " denoiser means of noisy patches + denoised blurred patches (proxy)",
                           "steps": step, "batch": args.batch, "patch": args.patch,
                           "hardware": f"{args.device}, bf16 autocast",
                           "wall_time_hours": round(clock.total / 3600, 2), "command": command,
                           "held_out_denoise25": rd, "weights_dtype": "float16"}, out.with_suffix(".json"))
        print(f"exported {out}.pt {rd}; its card has no Euler steps per task family yet (PMRF uses the paper's 25): "
              f"python -m restore.train.flow_steps --data {args.data} --flow {out.name}", flush=True)

    if args.export:
        export()
        return
    net.train()
    t_last = time.time()
    while step < args.steps:
        if args.cosine_to is not None:
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step - args.cosine_start, args.steps - args.cosine_start, args.lr, args.cosine_to)
        x = random_patches(train_imgs, args.batch, args.patch, gen).to(dev)
        z0 = source_means(x, den, gen) + args.sigma_s * torch.randn(x.shape, generator=gen).to(dev)
        t = ((torch.arange(args.batch) + torch.rand(args.batch, generator=gen)) / args.batch).to(dev)  # stratified
        xt = t.view(-1, 1, 1, 1) * x + (1 - t.view(-1, 1, 1, 1)) * z0
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            v = net(xt, t)
        loss = ((v.float() - (x - z0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        ema.update(net, step)
        if step % args.ckpt_every == 0:
            checkpoint()
            print(f"step {step} loss {loss.item():.5f} {1000 * (time.time() - t_last) / args.ckpt_every:.0f} ms/step",
                  flush=True)
            t_last = time.time()
        if deadline.passed:
            break
    checkpoint()
    export()


if __name__ == "__main__":
    main()
