"""Train ScoreDVI's four variational networks across images: an amortised start for per-image inference.

    python -m restore.train.scoredvi_init --out models/scoredvi-init --ckpt runs/scoredvi_init/last.pt --steps 3000

ScoreDVI fits four small networks to one noisy image from random weights (400 Adam iterations, minutes per crop).
Here the same networks are trained on the same loss (``restore.solvers.scoredvi.variational_loss``, Eq. 11: no
clean image is ever used) averaged over batches of noisy crops, so their weights already map a noisy image to a
reasonable posterior; ScoreDVI then starts from them (``init="scoredvi-init"``) and refines per image in a fraction
of the iterations. This is amortised variational inference as a warm start, not a replacement: the per-image
optimisation still runs.

Data: random crops of BSD432-train without its last 8 files (the priors' held-out files), each degraded by one of
synthetic camera-like noise (``restore.train.camera_noise``, light or heavy, std scaled by 0.5-1.5) or i.i.d.
Gaussian noise (5-50/255), so the networks see the signal-dependent, correlated noise of real photos and the
i.i.d. case. The prior weight lambda per crop is the paper's rule on the crop's noise estimate, as at run time.
Resumable (``--ckpt``), ``--stop-after MINUTES``; exports float16 weights + card to ``--out`` (.pt / .json).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from restore.files import save_atomic, write_json_atomic
from restore.train import camera_noise
from restore.train.common import (Checkpointer, Clock, Deadline, half_state_dict, list_images, load_uint8_images,
                                  random_patches, training_command, training_device)

PRIOR_HELD_OUT = 8


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each (3, H, W) image of the batch x (B, 3, H, W) with its own random noise (module docstring)."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        u = float(torch.rand(1, generator=gen))
        if u < 0.25:
            sigma = (5 + 45 * float(torch.rand(1, generator=gen))) / 255
            out[i] = (x[i] + sigma * torch.randn(x[i].shape, generator=gen)).clamp(0, 1)
        else:
            level = "light" if u < 0.6 else "heavy"
            scale = 0.5 + float(torch.rand(1, generator=gen))
            out[i] = camera_noise.simulate(x[i:i + 1], level, gen, scale)[0]
    return out


def export(nets, cfg, c: int, out: Path, card: dict) -> None:
    from restore.solvers.scoredvi import nets_config

    config = nets_config(c, cfg)
    save_atomic({"config": config, "state_dict": half_state_dict(nets.state_dict())}, out.with_suffix(".pt"))
    write_json_atomic({**card, "nets": config}, out.with_suffix(".json"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--out", default="models/scoredvi-init")
    ap.add_argument("--ckpt", default="runs/scoredvi_init/last.pt")
    ap.add_argument("--denoiser", default="score-natural")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stop-after", type=float, default=None, help="stop after N minutes (resumable)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    dev = training_device(args.device, args.threads)
    from restore.priors import registry
    from restore.solvers.scoredvi import (ScoreDVIConfig, _VariationalNets, estimate_noise_std, prior_weight,
                                          variational_loss)

    files = list_images(args.data)[:-PRIOR_HELD_OUT]
    images = load_uint8_images(files)
    den = registry.load(args.denoiser, dev).module
    cfg = ScoreDVIConfig(mc_samples=1)  # one draw per component: an unbiased, cheaper gradient of the same loss
    torch.manual_seed(args.seed)
    nets = _VariationalNets(3, cfg).to(dev)
    opt = torch.optim.Adam(nets.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps, eta_min=args.lr / 20)
    gen = torch.Generator().manual_seed(args.seed)
    ckpt = Checkpointer(args.ckpt, nets=nets, opt=opt, sched=sched, gen=gen)
    state = ckpt.resume(dev) or {}
    step, log = state.get("step", 0), state.get("log", [])
    clock, deadline = Clock(state.get("seconds", 0.0)), Deadline(args.stop_after)
    running = None
    while step < args.steps and not deadline.passed:
        x = random_patches(images, args.batch, args.patch, gen)
        y = degrade(x, gen).to(dev)
        lam = torch.tensor([prior_weight(estimate_noise_std(y[i:i + 1])) for i in range(y.shape[0])], device=dev)
        loss = variational_loss(nets(y), y, den, lam, cfg, gen if dev.type == "cpu" else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            print(f"step {step} loss {running:.4f} lr {sched.get_last_lr()[0]:.2e} {clock.total / 60:.1f} min",
                  flush=True)
            log.append({"step": step, "loss": round(running, 5)})
        if step % args.ckpt_every == 0 or step == args.steps or deadline.passed:
            ckpt.save(step=step, seconds=clock.total, log=log, command=training_command(
                "restore.train.scoredvi_init", argv))
    card = {"name": Path(args.out).name, "kind": "variational",
            "architecture": "ScoreDVI's four networks (x: deepinv UNet 32-64-128 with batch norm; phi, z, omega: "
                            "5-layer CNNs of width 32), 3 mixture components",
            "parameters": sum(p.numel() for p in nets.parameters()),
            "training_data": f"{Path(args.data).name} ({len(files)} images; last {PRIOR_HELD_OUT} held out), "
                             "random crops with synthetic camera-like or Gaussian noise (restore.train.camera_noise)",
            "objective": "ScoreDVI's variational loss (Eq. 11) averaged over noisy crops; no clean images",
            "denoiser": args.denoiser, "denoiser_digest": registry.digest(args.denoiser),
            "steps": step, "batch": args.batch, "patch": args.patch, "lr": args.lr,
            "hardware": f"{args.device}, {args.threads} thread(s)", "wall_time_hours": round(clock.total / 3600, 3),
            "command": training_command("restore.train.scoredvi_init", argv),
            "date": datetime.date.today().isoformat(), "loss_log": log[-40:], "weights_dtype": "float16"}
    export(nets, cfg, 3, Path(args.out), card)
    print(f"step {step}: exported {args.out}.pt / .json", flush=True)
    print(json.dumps({k: card[k] for k in ("steps", "wall_time_hours")}))


if __name__ == "__main__":
    main()
