"""APS: anchored posterior sampling with a masked discrete-token diffusion prior (Rout et al., "Test-Time Anchoring
for Discrete Diffusion Posterior Sampling").

The paper has no public code; this is our reading of it (notes/aps-and-quantization.md, part 1):

    z <- all [MASK]  (a token grid of the image's size / 4)
    for i = T .. 1  (t = i / T):
        pi <- softmax(transformer(z))                          one forward pass, no gradient
        l  <- log pi on masked rows (unmasked rows are frozen one-hots)
        repeat N_inner:  quantised expectation (QE) step on l
            p = softmax(l);  e_bar = p @ C;  e = e_bar + sg(Q(e_bar) - e_bar)   (straight-through to the grid)
            loss = ||y - A D(e)||^2 / (2 sigma^2) / N + beta * sum_masked KL(p || pi) / N
        anchors  z_hat = Q(p @ C)  (may be tokens with almost no prior mass)
        confidence = log p[z_hat] + Gumbel * temperature * t  (MaskGIT-style exploration, from the generator)
        unmask the most confident masked positions so that a fraction cos(pi/2 (T - i + 1) / T) stays masked
    x = D(C[z])

K posterior samples are K batched chains that differ through the Gumbel draws; the std map is their spread. The
decoder D needs gradients (float); the transformer is forward-only. Images are padded to a multiple of 4 and
cropped; grey images run as three equal channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from restore.posterior import Posterior
from restore.solvers.base import Solver, SolverError, noise_sigma


@dataclass
class APSConfig:
    steps: int = 16  # T unmasking steps
    inner_steps: int = 30  # QE optimisation steps per unmasking step
    lr: float = 0.3
    beta: float = 0.5  # weight of KL(p || pi) on masked rows (keeps the tilt near the prior)
    temperature: float = 4.5  # Gumbel temperature at t = 1 (MaskGIT), scaled by t
    sigma_floor: float = 0.01


class APSSolver(Solver):
    name = "aps"
    config_cls = APSConfig
    prior_kinds = ("tokens",)
    default_prior = "tokens-natural"
    needs_prior_gradients = True  # through the tokenizer's decoder
    int8_ok = True  # restore.quant int8s only the transformer, which APS runs forward-only
    paper = "Rout et al., Test-Time Anchoring for Discrete Diffusion Posterior Sampling (APS), 2025"

    def _solve(self, y, physics, prior, *, n_samples, generator, progress):
        if prior.card.get("quantized") == "int8" and "tokenizer" in prior.card.get("quantized_parts", ["tokenizer"]):
            raise SolverError("aps back-propagates through the tokenizer's decoder: its tokenizer must stay float "
                              "(restore.quant quantises only the transformer)")
        cfg = self.config
        tok, tf = prior.module.tokenizer, prior.module.transformer
        sigma = max(noise_sigma(physics, y), cfg.sigma_floor)
        xs = self._x_shape(y, physics)
        c, (h_img, w_img) = xs[1], xs[2:]
        hp, wp = -(-h_img // 4) * 4, -(-w_img // 4) * 4
        gh, gw = hp // 4, wp // 4
        length = gh * gw
        book = tok.codebook()  # (Kc, d)
        k = n_samples
        z = torch.full((k, gh, gw), tf.mask_id, dtype=torch.long, device=y.device)
        yk = y.expand(k, *y.shape[1:])
        n_pix = h_img * w_img

        def decode(e):  # e (k, L, d) -> images (k, c, H, W)
            img = tok.decode_codes(e.transpose(1, 2).reshape(k, -1, gh, gw))[..., :h_img, :w_img]
            return img.mean(1, keepdim=True) if c == 1 else img

        def snap(e_bar):  # nearest FSQ grid point = per-dimension rounding
            return tok.indices_to_codes(tok.codes_to_indices(e_bar.clamp(-1, 1).transpose(1, 2)
                                                             .reshape(k, -1, gh, gw)).flatten(1))

        history = []
        for i in range(cfg.steps, 0, -1):
            t = i / cfg.steps
            masked = z.flatten(1) == tf.mask_id  # (k, L)
            with torch.no_grad():
                log_pi = F.log_softmax(tf(z), dim=-1)  # (k, L, Kc)
            fixed = F.one_hot(z.flatten(1).clamp_max(book.shape[0] - 1), book.shape[0]).float()
            logits = log_pi.clone().requires_grad_(True)
            opt = torch.optim.Adam([logits], lr=cfg.lr)
            for _ in range(cfg.inner_steps):
                p = torch.where(masked[..., None], F.softmax(logits, -1), fixed)
                e_bar = p @ book
                e = e_bar + (snap(e_bar) - e_bar).detach()
                fit = ((physics.A(decode(e)) - yk) ** 2).sum() / (2 * sigma**2) / n_pix
                kl = (p * (torch.log(p.clamp_min(1e-12)) - log_pi)).sum(-1)
                loss = fit + cfg.beta * (kl * masked).sum() / n_pix
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            history.append(float(fit.detach()) / k)
            with torch.no_grad():
                p = torch.where(masked[..., None], F.softmax(logits, -1), fixed)
                anchors = tok.codes_to_indices(snap(p @ book).transpose(1, 2).reshape(k, -1, gh, gw)).flatten(1)
                conf = torch.log(torch.gather(p, -1, anchors[..., None])[..., 0].clamp_min(1e-12))
                u = torch.rand(conf.shape, generator=generator, device=generator.device).to(conf)
                conf = conf + cfg.temperature * t * (-torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12))))
                conf = conf.masked_fill(~masked, -math.inf)
                stay_masked = int(math.floor(length * math.cos(math.pi / 2 * (cfg.steps - i + 1) / cfg.steps)))
                n_new = masked.sum(1) - stay_masked  # per chain
                order = conf.argsort(dim=1, descending=True)
                rank = torch.empty_like(order)
                rank.scatter_(1, order, torch.arange(length, device=order.device).expand(k, -1))
                unmask = masked & (rank < n_new[:, None])
                z = torch.where(unmask, anchors, z.flatten(1)).view(k, gh, gw)
            progress((cfg.steps - i + 1) / cfg.steps, f"APS step {cfg.steps - i + 1}/{cfg.steps}")
        with torch.no_grad():
            samples = decode(book[z.flatten(1)]).clamp(0, 1)
        return Posterior(mean=samples.mean(0, keepdim=True), samples=samples,
                         meta={"measurement_fit_per_step": history, "token_grid": [gh, gw], "sigma": sigma})

    @staticmethod
    def _x_shape(y, physics):
        factor = getattr(physics, "factor", 1) if type(physics).__name__ == "Downsampling" else 1
        return (1, y.shape[1], y.shape[2] * factor, y.shape[3] * factor)


SOLVER = APSSolver
