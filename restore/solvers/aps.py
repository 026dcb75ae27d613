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

Two choices of ours on top of that reading (both on by default; ``carry_tilt=False, init="prior"`` switches them off):
- ``carry_tilt``: phi is one set of test-time parameters (as in the paper's bound, where x_phi is a learned predictor),
  not re-drawn per step: a still-masked row starts step i from log pi_i + (l - log pi) of step i+1, so the measurement
  fit accumulates over the steps instead of restarting from the prior each time.
- ``init="measurement"``: at the first step phi is tilted toward the measurement, by the FSQ distance-as-logits
  -||E(x0) - C_k||^2 / (2 tau^2) (tau in grid steps) of the tokenizer's continuous encoding of the cheap estimate
  x0 (y, bicubic y or the filled-in inpainting input). With our weak 4.7 M-parameter prior a near-uniform pi left
  the first anchors to chance. ``python -m benchmarks.aps --quick`` (3 held-out BSD432 64 px crops, 6 x 8 steps,
  4 samples): plain reading -> both, x4 SR 20.6 -> 24.3 dB, denoising 25/255 21.0 -> 26.7, box inpainting
  19.2 -> 25.2 (the tokenizer's own ceiling: 27.0). The price: samples are closer together (mean std 0.033 -> 0.009
  on SR). The same run with the transformer replaced by equal logits loses only 0.0-0.2 dB: our weak prior
  (masked-token accuracy 6.4 %) adds little yet. On deblurring x0 is the Wiener-Hunt deconvolution of y
  (``per_family``: ``init_estimate="wiener"``; ``restore.solvers.wiener``, prior-free, ~0.02 s at 256 px) rather than y
  itself: on the 8 held-out BSD432 crops (128 px, 4 samples, ``python -m restore.train.tune --solver aps --grid
  init_estimate=observation,wiener --images 8 --crop 128 --samples 4 --tasks deblur_gauss1 deblur_motion``)
  Gaussian deblurring 26.73 -> 27.11 dB and motion blur 23.79 -> 24.79 dB at the same time, most of what the fast
  default had lost to 16 x 30 steps on motion blur.

K posterior samples are K batched chains that differ through the Gumbel draws; the std map is their spread. Snapped
anchors make APS mode-seeking (the paper's point) and its samples under-dispersed; ``anchor_sampling=1`` draws each
anchor from the tilted table p instead (notes 1.8), which widens the samples toward the coverage a posterior sampler
should have at a small PSNR cost (``python -m benchmarks.aps --quick``). The
decoder D needs gradients (float); the transformer is forward-only. Images are padded to a multiple of 4 and
cropped; grey images run as three equal channels.

Speed (ours): every inner step decodes and back-propagates all K chains, so the cost is steps x inner_steps decoder
passes. The default runs 8 x 3 steps at Adam lr 1.0 (1/20 of our former 16 x 30 at lr 0.3, which ``preset="paper"``
restores; the paper's own counts are not public: 15 steps with MMaDA, about 100 inner steps by a reviewer's
account). Chosen on 3 held-out BSD432 crops (96 px, 2 samples, ``python -m restore.train.tune --solver aps --grid
steps=4,6,8 inner_steps=3,6 lr=0.3,1.0``, then lr 2 and 3, and the 16 x 30 reference): mean over the six tasks 25.60
dB at 3.9 s against 25.90 dB at 57 s. A larger lr makes up for the fewer inner steps (4 x 6: 25.47 at lr 0.3, 25.59
at 1.0, 25.47 at 2.0). Motion blur is what the cut costs (24.59 vs 25.74 dB; 8 x 6 steps: 24.94 at twice the time);
denoising and the inpaintings are level (within 0.07 dB), Gaussian deblurring -0.39 and x4 SR -0.25. The Wiener start
on deblurring (above) wins that back: on the 4 quick CBSD68 crops the default is within 0.1 dB of 16 x 30 steps from
the blurred y on both blurs (27.77 / 25.24 against 27.69 / 25.26 dB; ``benchmarks.quality --quick --paper-settings``).

Two more cuts that change nothing the paper fixes (``preset="paper"`` turns both off):
- ``window=16``: the transformer was trained on 16 x 16 token grids (64 px); a 256 px image is a 64 x 64 grid, over
  which global attention cost 27 % of a run and stretched the learned position table 4x. Larger grids are now read
  as overlapping 16 x 16 tiles (stride 12, logits averaged), each with the table it was trained on: attention falls
  from 53 to 7 s of a one-thread 256 px K = 8 run. The first step's all-[MASK] grid is run once for all K chains.
- ``precision="auto"``: bf16 autocast of the decoder (forward and backward) and the transformer where the CPU has
  native bf16 (AMX / AVX512-BF16; ``restore.precision``), about 2x on both; the output decode stays float32.
Held-out (3 BSD432 crops, 128 px, 2 samples; ``python -m restore.train.tune --solver aps --grid window=0,16
precision=float,auto --crop 128 --images 3``): 25.55 dB at 6.1 s (both off) -> 25.57 dB at 4.0 s (both on), every
task within 0.06 dB. ``python -m benchmarks.speed --targets --solvers aps`` (256 px, K = 8, 2 threads): 48.5 s / 297
forwards on denoising, 43.8 s / 268 on deblurring, against the 60 s / 305-forward
target (in float, same quiet machine: 79 / 67 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from restore import precision
from restore.posterior import Posterior
from restore.solvers import wiener
from restore.solvers.base import Solver, SolverError, noise_sigma
from restore.tasks import family_of


# deblurring's first tilt centres on a Wiener-Hunt deconvolution, not the blurred y (module docstring: 8 held-out
# BSD432 crops, Gaussian 26.73 -> 27.11 dB, motion blur 23.79 -> 24.79 dB, no extra time)
PER_FAMILY = {"deblur": {"init_estimate": "wiener"}}


@dataclass
class APSConfig:
    steps: int = 8  # T unmasking steps (16 under preset="paper")
    inner_steps: int = 3  # QE optimisation steps per unmasking step (30 under preset="paper")
    lr: float = 1.0  # Adam's step on the tilted logits (0.3 under preset="paper")
    beta: float = 0.5  # weight of KL(p || pi) on masked rows (keeps the tilt near the prior)
    temperature: float = 4.5  # Gumbel temperature at t = 1 (MaskGIT), scaled by t
    sigma_floor: float = 0.01
    # Ours, beyond the paper's text (see the module docstring); carry_tilt=False, init="prior" is the plain reading.
    carry_tilt: bool = True  # phi persists: a still-masked row starts from the new prior + its previous tilt
    init: str = "measurement"  # "prior" (phi = prior at the first step) or "measurement" (tilted toward E(x0))
    init_temperature: float = 0.5  # width, in FSQ grid steps, of the measurement tilt around E(x0)
    # x0 of the measurement tilt: "observation" (base.initial_estimate: y, bicubic y, the filled-in input) or, on
    # deblurring, "wiener" (the Wiener-Hunt deconvolution of y); per_family sets "wiener" for deblurring
    init_estimate: str = "observation"
    anchor_sampling: float = 0.0  # > 0: anchors drawn from p^(1/this) instead of snapped (diversity; notes 1.8)
    window: int = 16  # the transformer reads grids larger than this (tokens) as overlapping tiles of its training size
    precision: str = "auto"  # "bf16" autocast of decoder and transformer where the CPU has native bf16 (restore.precision)
    # task families whose settings differ (unless given explicitly; keys as RED-Diff's: restore.provenance.family_entry)
    per_family: dict | None = field(default_factory=lambda: {k: dict(v) for k, v in PER_FAMILY.items()})


# our earlier default, before the fast one; the paper's own counts are not public (notes 1.6: 15 steps with MMaDA,
# about 100 inner steps by a reviewer's account). It starts deblurring from y, as the benchmarks' paper rows were run
PAPER = {"steps": 16, "inner_steps": 30, "lr": 0.3, "window": 0, "precision": "float", "per_family": None}


class APSSolver(Solver):
    name = "aps"
    config_cls = APSConfig
    presets = {"paper": PAPER}
    # on denoising APS cannot beat what its tokenizer reconstructs: held out (benchmarks.lownoise, 6 crops) it gave
    # 27.5 / 27.4 / 27.4 / 27.3 / 27.0 dB at noise 2.55 / 5 / 7.5 / 10 / 15/255 (input 40.1 / 34.3 / 30.7 / 28.3 /
    # 24.8), the tokenizer's card 27.0: warn where the input is 0.5 dB above that, about 10.7/255 and less
    ceiling = (("held_out_64px", "tokenizer_psnr"), 0.5, "reconstructs clean held-out crops through its tokenizer at",
               "another solver (pmrf)")
    prior_kinds = ("tokens",)
    default_prior = "tokens-natural"
    needs_prior_gradients = True  # through the tokenizer's decoder
    int8_ok = True  # restore.quant int8s only the transformer, which APS runs forward-only
    paper = "Rout et al., Test-Time Anchoring for Discrete Diffusion Posterior Sampling (APS), 2025"

    def cost(self, task, samples: int, prior=None) -> float:
        # measured in float (benchmarks/results/speed_quick.json, 256 px): one inner step ~1.4 denoiser forwards for
        # the first sample and ~1.6 for each further one (the tokenizer's decoder runs forward and backward per
        # sample); bf16 autocast on a CPU with native bf16 cuts that to about 0.9x (speed_targets.json: 268-297
        # forwards at K = 8 where the float formula says 302)
        fast = precision.estimate_bf16(self.config.precision)
        return self.config.steps * self.config.inner_steps * (1.4 + 1.6 * (samples - 1)) * (0.9 if fast else 1.0)

    def _solve(self, y, physics, prior, *, n_samples, generator, progress):
        if prior.card.get("quantized") == "int8" and "tokenizer" in prior.card.get("quantized_parts", ["tokenizer"]):
            raise SolverError("aps back-propagates through the tokenizer's decoder: its tokenizer must stay float "
                              "(restore.quant quantises only the transformer)")
        cfg, _ = self.settings_for(family_of(physics))
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
        bf16 = self.bf16(y.device)
        tf_int8 = prior.card.get("quantized") == "int8"

        def decode(e, fast=True):  # e (k, L, d) -> images (k, c, H, W), float32; fast: under the bf16 setting
            with precision.autocast(bf16 and fast, y.device):
                img = tok.decode_codes(e.transpose(1, 2).reshape(k, -1, gh, gw))
            img = img.float()[..., :h_img, :w_img]
            return img.mean(1, keepdim=True) if c == 1 else img

        def snap(e_bar):  # nearest FSQ grid point = per-dimension rounding
            return tok.indices_to_codes(tok.codes_to_indices(e_bar.clamp(-1, 1).transpose(1, 2)
                                                             .reshape(k, -1, gh, gw)).flatten(1))

        if cfg.init not in ("prior", "measurement"):
            raise SolverError(f"aps init must be 'prior' or 'measurement', not {cfg.init!r}")
        tilt = self._measurement_tilt(tok, wiener.starting_estimate(y, physics, cfg.init_estimate), book, (hp, wp),
                                      cfg.init_temperature).expand(k, -1, -1) \
            if cfg.init == "measurement" else torch.zeros(k, length, book.shape[0], device=y.device)
        history = []
        for i in range(cfg.steps, 0, -1):
            t = i / cfg.steps
            masked = z.flatten(1) == tf.mask_id  # (k, L)
            with torch.no_grad():
                # the first step's grids are all [MASK] in every chain: one transformer pass serves them all
                same = i == cfg.steps
                with precision.autocast(bf16 and not tf_int8, y.device):  # int8 Linear kernels take float32 only
                    logits_pi = tf(z[:1] if same else z, window=cfg.window)
                log_pi = F.log_softmax(logits_pi.float(), dim=-1)  # (k or 1, L, Kc)
                log_pi = log_pi.expand(k, -1, -1) if same else log_pi
            fixed_codes = book[z.flatten(1).clamp_max(book.shape[0] - 1)]  # (k, L, d); used on unmasked rows only
            logits = (log_pi + tilt).requires_grad_(True)
            opt = torch.optim.Adam([logits], lr=cfg.lr)
            for _ in range(cfg.inner_steps):
                # unmasked rows are frozen one-hots: their expectation is their code, their KL is masked out
                log_p = F.log_softmax(logits, -1)
                p = log_p.exp()
                e_bar = torch.where(masked[..., None], p @ book, fixed_codes)
                e = e_bar + (snap(e_bar) - e_bar).detach()
                fit = ((physics.A(decode(e)) - yk) ** 2).sum() / (2 * sigma**2) / n_pix
                kl = (p * (log_p - log_pi)).sum(-1)
                loss = fit + cfg.beta * (kl * masked).sum() / n_pix
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            history.append(float(fit.detach()) / k)
            with torch.no_grad():
                if cfg.carry_tilt:
                    tilt = (logits - log_pi).detach()
                elif i == cfg.steps:
                    tilt = torch.zeros_like(tilt)
                p = F.softmax(logits, -1)  # rows already unmasked get no new anchor, so theirs are not needed
                if cfg.anchor_sampling > 0:
                    drawn = torch.log(p.clamp_min(1e-12)) / cfg.anchor_sampling
                    g = torch.rand(drawn.shape, generator=generator, device=generator.device).to(drawn)
                    anchors = (drawn - torch.log(-torch.log(g.clamp(1e-12, 1 - 1e-12)))).argmax(-1)
                else:
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
            samples = decode(book[z.flatten(1)], fast=False).clamp(0, 1)  # the output in full precision
        return Posterior(mean=samples.mean(0, keepdim=True), samples=samples,
                         meta={"measurement_fit_per_step": history, "token_grid": [gh, gw], "sigma": sigma,
                               "precision": "bf16" if bf16 else "float32"})

    @staticmethod
    @torch.no_grad()
    def _measurement_tilt(tok, x0, book, padded_hw, temperature: float) -> torch.Tensor:
        """(1, L, Kc) log-weights -||E(x0) - C_k||^2 / (2 tau^2) (in grid steps) of every code around the tokenizer's
        continuous encoding of the cheap estimate x0 (1, C, H, W): the measurement's own vote per token."""
        x0 = x0.expand(-1, 3, -1, -1) if x0.shape[1] == 1 else x0
        hp, wp = padded_hw
        x0 = F.pad(x0, (0, wp - x0.shape[-1], 0, hp - x0.shape[-2]), mode="replicate")
        u = torch.tanh(tok.enc(x0 * 2 - 1)).flatten(2).transpose(1, 2)  # (1, L, d) in [-1, 1]
        d2 = ((u[:, :, None, :] - book[None, None]) * tok.half_levels).pow(2).sum(-1)  # squared grid steps
        return F.log_softmax(-d2 / (2 * temperature**2), dim=-1)

    @staticmethod
    def _x_shape(y, physics):
        factor = getattr(physics, "factor", 1) if type(physics).__name__ == "Downsampling" else 1
        return (1, y.shape[1], y.shape[2] * factor, y.shape[3] * factor)


SOLVER = APSSolver
