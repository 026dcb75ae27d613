"""Train a compressive autoencoder (compressai architecture) for VBLE by rate-distortion; resumable.

    python -m restore.train.cae --arch mbt2018-mean --N 96 --M 128 --lmbda 0.0130 \
        --data ../shared/data/BSD432-train --out models/cae-natural-q4 --ckpt runs/cae-q4/last.pt --steps 40000

Loss: compressai's RateDistortionLoss (lambda * 255^2 * MSE + bpp), Adam 1e-4 on the transforms and 1e-3 on the
entropy bottleneck's auxiliary loss, as in compressai's example trainer. lambda follows compressai's MSE quality
table (q3 0.0067, q4 0.0130, q6 0.0483). Every ``--ckpt-every`` steps the full state goes to ``--ckpt`` (atomic);
rerunning resumes. Export (at the end or with ``--export``): ``update()`` of the entropy models, float16 weights to
OUT.pt and a card OUT.json with the measured rate-distortion point on held-out crops (estimated bpp from the
likelihoods, PSNR of the reconstruction) and an actual compress/decompress round trip.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from restore.files import save_atomic, write_json_atomic
from restore.priors.cae import build
from restore.train.common import (Checkpointer, Clock, Deadline, centre_crops, cosine_lr, half_state_dict,
                                  list_images, load_uint8_images, random_patches, training_command, training_device,
                                  warm_start)


@torch.no_grad()
def rate_distortion(net, val: torch.Tensor) -> dict:
    """Estimated bpp (from the likelihoods) and PSNR on the validation crops; real bpp of one compress/decompress."""
    net.eval()
    bpps, psnrs = [], []
    for x in val:
        out = net(x[None])
        n = x.shape[-1] * x.shape[-2]
        bpps.append(sum(torch.log(v).sum() for v in out["likelihoods"].values()).item() / (-math.log(2) * n))
        mse = torch.mean((out["x_hat"].clamp(0, 1) - x[None]) ** 2).item()
        psnrs.append(10 * math.log10(1 / max(mse, 1e-12)))
    net.update(force=True)
    comp = net.compress(val[:1])
    rec = net.decompress(comp["strings"], comp["shape"])["x_hat"].clamp(0, 1)
    real_bpp = sum(len(s[0]) for s in comp["strings"]) * 8 / (val.shape[-1] * val.shape[-2])
    real_psnr = 10 * math.log10(1 / max(torch.mean((rec - val[:1]) ** 2).item(), 1e-12))
    net.train()
    return {"bpp": round(sum(bpps) / len(bpps), 4), "psnr": round(sum(psnrs) / len(psnrs), 3),
            "coded_bpp_first_image": round(real_bpp, 4), "coded_psnr_first_image": round(real_psnr, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mbt2018-mean")
    ap.add_argument("--N", type=int, default=96)
    ap.add_argument("--M", type=int, default=128)
    ap.add_argument("--lmbda", type=float, default=0.0130)
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--out", default="models/cae-natural-q4")
    ap.add_argument("--ckpt", default="runs/cae-q4/last.pt")
    ap.add_argument("--steps", type=int, default=40_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--cosine-to", type=float, default=None,
                    help="decay the lr along a cosine from --lr at step 0 to this value at --steps (default: constant "
                         "lr); the final drop is where compressai's trainers gain their last tenths of a dB")
    ap.add_argument("--val-images", type=int, default=8)
    ap.add_argument("--val-size", type=int, default=256)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--val-every", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stop-after", type=float, default=None, help="stop this run after N minutes (still resumable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--colour-aug", type=float, default=0.0,
                    help="fraction of patches given a random channel permutation and saturation boost "
                         "(restore.train.common.colour_jitter), so the CAE also codes saturated, rare colours")
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--init-from", default=None,
                    help="with no checkpoint: start from this other trained CAE (.pt of the same --N/--M, e.g. "
                         "models/cae-natural-q2.pt) instead of --out's shipped weights; fine-tuning a trained CAE to "
                         "another lambda converges far faster than a fresh start")
    args = ap.parse_args(argv)
    dev = training_device(args.device, args.threads)
    deadline = Deadline(args.stop_after)
    from compressai.losses import RateDistortionLoss

    files = list_images(args.data)
    train_imgs = load_uint8_images(files[:-args.val_images])
    val = centre_crops(load_uint8_images(files[-args.val_images:]), args.val_size).to(dev)
    torch.manual_seed(args.seed)  # initial weights, so a run is reproducible
    net = build(args.arch, args.N, args.M).to(dev)
    main_params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=args.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    crit = RateDistortionLoss(lmbda=args.lmbda)
    gen = torch.Generator().manual_seed(args.seed)
    step, log, prev = 0, [], 0.0
    initialised = None
    command = training_command("restore.train.cae", argv)
    ckpt = Checkpointer(args.ckpt, non_strict=("model",), model=net, opt=opt, aux_opt=aux_opt, rng=gen)
    if (ck := ckpt.resume(dev)) is not None:
        step, log, prev, command = ck["step"], ck["log"], ck["seconds"], ck.get("command", command)
        initialised = ck.get("initialised_from")
    elif args.init_from:
        from restore.priors.registry import load_checkpoint

        init = load_checkpoint(Path(args.init_from))
        try:
            net.load_state_dict(init["state_dict"], strict=False)
        except RuntimeError as exc:
            raise SystemExit(f"--init-from {args.init_from} does not fit --N {args.N} --M {args.M}: {exc}") from None
        init_card = Path(args.init_from).with_suffix(".json")
        init_steps = json.loads(init_card.read_text()).get("steps") if init_card.exists() else None
        initialised = f"{Path(args.init_from).name} (its {init_steps} steps not counted here)"
        print(f"initialised from {initialised}", flush=True)
    elif (card := warm_start(args.out, net, strict=False)) is not None:
        step, log = int(card.get("steps", 0)), card.get("validation_log", [])
        prev, command = 3600 * float(card.get("wall_time_hours", 0)), card.get("command", command)
        initialised = card.get("initialised_from")
    clock = Clock(prev)
    config = {"arch": args.arch, "N": args.N, "M": args.M}

    def checkpoint():
        ckpt.save(step=step, log=log, seconds=clock.total, command=command, initialised_from=initialised)

    def export():
        rd = rate_distortion(net, val)  # also runs update(): the CDF tables are saved with the weights
        out = Path(args.out)
        save_atomic({"config": config, "state_dict": half_state_dict(net.state_dict())}, out.with_suffix(".pt"))
        write_json_atomic({
            "name": out.name, "kind": "cae", "architecture": f"compressai {args.arch} N={args.N} M={args.M}",
            "parameters": sum(p.numel() for p in net.parameters()), "lambda": args.lmbda,
            "training_data": f"{Path(args.data).name} ({len(files) - args.val_images} images; last "
                             f"{args.val_images} held out)", "steps": step, "batch": args.batch, "patch": args.patch, "hardware": args.device,
            "wall_time_hours": round(clock.total / 3600, 2), "command": command,
            "lr": args.lr if args.cosine_to is None else f"cosine {args.lr:g} -> {args.cosine_to:g} over {args.steps} steps",
            "rate_distortion_held_out": rd, "validation_log": log, "weights_dtype": "float16",
            **({"colour_augmentation": args.colour_aug} if args.colour_aug else {}),
            **({"initialised_from": initialised} if initialised else {})},
            out.with_suffix(".json"))
        print(f"exported {out}.pt  {rd}", flush=True)

    if args.export:
        export()
        return
    net.train()
    t_last, acc, skipped = time.time(), 0.0, 0
    while step < args.steps:
        if args.cosine_to is not None:
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, args.steps, args.lr, args.cosine_to)
        x = random_patches(train_imgs, args.batch, args.patch, gen, colour_fraction=args.colour_aug).to(dev)
        out = net(x)
        loss = crit(out, x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            # a warm-started run on a GPU once diverged to NaN weights here: skip the update and, if the weights
            # are already broken, go back to the last checkpoint
            skipped += 1
            if not all(torch.isfinite(p).all() for p in main_params):
                rng = gen.get_state()  # keep drawing new batches, not the ones that led here
                ckpt.resume(dev)
                gen.set_state(rng)
            if skipped > 100:
                raise RuntimeError(f"CAE training diverged: {skipped} non-finite steps (lower --lr)")
            continue
        opt.step()
        aux = net.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()
        step += 1
        acc += loss.item()
        if step % args.ckpt_every == 0:
            checkpoint()
            print(f"step {step} loss {acc / args.ckpt_every:.4f} {1000 * (time.time() - t_last) / args.ckpt_every:.0f}"
                  " ms/step", flush=True)
            t_last, acc = time.time(), 0.0
        if step % args.val_every == 0:
            log.append({"step": step, **rate_distortion(net, val)})
            print(f"step {step} {log[-1]}", flush=True)
        if deadline.passed:
            break
    checkpoint()
    export()


if __name__ == "__main__":
    main()
