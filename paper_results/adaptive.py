"""Adaptive attacks: the detectors of Table 4 against an attacker who knows their features (slow).

Carlini and Wagner (2017, "Adversarial examples are not easily detected") showed that detectors
which catch standard attacks can fail once the attacker optimises against them. This script asks
that of the Fisher detector ("Ours": top-20 eigenvalues of G_x, random forest), KD+BU and LID, on
the model and budget of Table 4 (the 90th percentile of FGM's least l2 perturbation).

1. Random correctly classified test inputs are split 70/30 by input. Each detector is trained as in
   Table 4 on the training inputs' clean and noisy copies (negatives) and their "BIM, stopped at
   success" examples (positives; the library's ``bim(early_stop=True)``, 10 steps of eps/5).
2. The attacker runs l2 PGD (``--steps`` normalised-gradient steps of 2.5 eps / steps, projected on
   the eps-ball and on [0, 1]) that descends, per input, the classifier's margin
   ``z_y - max_{j != y} z_j`` while the input is classified correctly and a penalty on the detector's
   features once it is fooled, and keeps the adversarial iterate of least penalty. (A fixed weighted
   sum ``margin + c * penalty`` fails: a weight large enough to hide the examples keeps them from
   crossing the boundary, where the Fisher eigenvalues peak.) The penalty is differentiable and
   mimics what each detector sees:

   - Fisher: ``mean_i max(log lambda_i(x) - tau_i, 0)`` over the top-5 eigenvalues of G_x, tau_i the
     median over clean training inputs. The eigenvalues are exact and differentiable: those of the
     C x C matrix ``M_ij = sqrt(p_i p_j) (e_i - p)^T J J^T (e_j - p)`` (the nonzero spectrum of
     ``G = sum_i p_i g_i g_i^T``), J the logit Jacobian by autograd with ``create_graph``.
   - KD+BU and LID: ``max(d(x) - d_clean, 0)`` with d the detector's own logistic-regression
     decision function on the torch-computed features (KD: Gaussian KDE of the last hidden layer
     against the detector's reference points of the predicted class; BU: the variance of 8
     Monte-Carlo dropout samples, redrawn each step; LID: the maximum-likelihood LID against the
     detector's reference minibatch in every layer), d_clean its median on clean training inputs.

3. Each detector scores the held-out inputs' adaptive examples against their clean and noisy copies:
   AUC, the attack's success rate within the budget, the detection rate at the threshold that
   flags 5% of the negatives, and the evasion rate (fooled and not flagged, over all test inputs).
   Beside each, the same PGD without the penalty (stopped at its first success), and the detector
   retrained on the adaptive examples of the training inputs: whether its features still separate
   once it knows the attack.

    python -m paper_results adaptive [--quick] [--datasets mnist,cifar] [--steps 100]   (default: MNIST only)

Every batch of attacks is cached (``--cache-dir``) with its own seed for the BU penalty's dropout
samples, so an interrupted run resumes and computes what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib

import numpy as np

from paper_results import _common as C

SIZES = C.Sizes(full={"mnist": 600, "cifar": 300, "train": 2000}, quick={"mnist": 40, "cifar": 24, "train": 200})
DETECTORS = ("Ours", "KD+BU", "LID")
TOP_K = 5  # eigenvalues in the Fisher penalty
BU_SAMPLES = 8  # dropout samples per attack step (the detector itself uses 50)
FPR = 0.05
ATTACK_BATCH = 100


# ------------------------------------------------------------------------- differentiable detector features
def fisher_log_eigenvalues(torch, net, x, k: int):
    """``(log lambda_1..k of G_x (n, k) float64, logits)``, differentiable in ``x`` (eq. 4, exact).

    The nonzero eigenvalues of ``G = J^T (diag p - p p^T) J`` are those of the C x C matrix
    ``M = D^{1/2} E K E^T D^{1/2}`` with ``K = J J^T``, ``E = I - 1 p^T`` and ``D = diag p``.
    """
    if not x.requires_grad:
        x = x.requires_grad_(True)
    z = net(x)
    n, n_classes = z.shape
    rows = [torch.autograd.grad(z[:, a].sum(), x, create_graph=True)[0].reshape(n, -1) for a in range(n_classes)]
    J = torch.stack(rows, 1).double()  # (n, C, d)
    p = torch.softmax(z.double(), dim=1)
    E = torch.eye(n_classes, dtype=torch.float64, device=x.device) - p[:, None, :]  # rows e_i - p
    K = J @ J.transpose(1, 2)
    sq = p.sqrt()
    M = sq[:, :, None] * (E @ K @ E.transpose(1, 2)) * sq[:, None, :]
    lam = torch.linalg.eigvalsh(0.5 * (M + M.transpose(1, 2))).flip(-1)[:, :k]
    return lam.clamp_min(1e-30).log(), z


def _activations(torch, net, layers: list[str], x, *, dropout: bool = False):
    """``(logits, {layer: activations (n, -1)})`` of ``net`` at ``x`` with autograd; dropout on or off."""
    modules = dict(net.named_modules())
    acts, handles = {}, []
    for name in layers:
        handles.append(modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: acts.__setitem__(name, out.reshape(out.shape[0], -1))))
    drops = [m for m in net.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    try:
        for m in drops:
            m.train(dropout)
        z = net(x)
    finally:
        for m in drops:
            m.eval()
        for h in handles:
            h.remove()
    return z, acts


def log_kde(torch, Z, ref, h: float):
    """Log density of a Gaussian KDE with bandwidth h (reference rows ``ref``) at the rows of Z."""
    d2 = torch.cdist(Z.double(), ref, p=2.0) ** 2
    const = -0.5 * Z.shape[1] * np.log(2 * np.pi * h * h)
    return torch.logsumexp(-d2 / (2 * h * h), dim=1) - np.log(ref.shape[0]) + const


def kd_reference(kd, c: int) -> np.ndarray:
    """The reference features of class c of a fitted KernelDensityFeatures (all of them when c has none)."""
    ref = kd.class_features_[c] if len(kd.class_features_[c]) else kd.all_features_
    return np.asarray(ref, dtype=np.float64)


def lid(torch, A, ref, k: int):
    """Maximum-likelihood LID of the rows of A among their k nearest rows of ``ref``."""
    r = torch.topk(torch.cdist(A.double(), ref, p=2.0), k, dim=1, largest=False).values.clamp_min(1e-300)
    return -1.0 / (torch.log(r / r[:, -1:]).mean(dim=1) - 1e-12)


def _decision(torch, pipeline, F):
    """The decision function of a fitted ``StandardScaler + LogisticRegression`` pipeline, in torch."""
    scaler, lr = pipeline[0], pipeline[-1]
    mean, scale = (torch.as_tensor(a, dtype=torch.float64) for a in (scaler.mean_, scaler.scale_))
    w = torch.as_tensor(lr.coef_[0], dtype=torch.float64)
    return ((F - mean) / scale) @ w + float(lr.intercept_[0])


class Penalty:
    """``penalty(x) -> (n,)`` for one fitted detector, and its reference level on clean inputs."""

    def __init__(self, torch, net, name: str, detector, X_clean: np.ndarray):
        self.torch, self.net, self.name, self.det = torch, net, name, detector
        self.level = None
        with torch.enable_grad():
            vals = [self.raw(torch.as_tensor(X_clean[i:i + ATTACK_BATCH])).detach()
                    for i in range(0, len(X_clean), ATTACK_BATCH)]
        self.level = torch.cat(vals).median(dim=0).values

    def raw(self, x):
        """The detector-facing quantity: log eigenvalues (n, k) or the logistic decision (n,)."""
        torch = self.torch
        if self.name == "Ours":
            return fisher_log_eigenvalues(torch, self.net, x.clone(), TOP_K)[0]
        if self.name == "KD+BU":
            return self._kdbu(x)
        return self._lid(x)

    def _kdbu(self, x):
        torch = self.torch
        union = self.det.features_
        kd = union.transformer_list[0][1]
        h = float(kd.bandwidth)
        z, acts = _activations(torch, self.net, [kd.layer_], x)
        pred = z.argmax(1)
        score = torch.empty(x.shape[0], dtype=torch.float64)
        for c in pred.unique().tolist():
            sel = pred == c
            score[sel] = log_kde(torch, acts[kd.layer_][sel], torch.as_tensor(kd_reference(kd, c)), h)
        P = torch.stack([torch.softmax(_activations(torch, self.net, [], x, dropout=True)[0].double(), 1)
                         for _ in range(BU_SAMPLES)])
        bu = (P * P).sum(-1).mean(0) - (P.mean(0) ** 2).sum(-1)
        return _decision(torch, self.det.classifier_, torch.stack([score, bu], 1))

    def _lid(self, x):
        torch = self.torch
        feats = self.det.features_
        _, acts = _activations(torch, self.net, list(feats.layers_), x)
        F = torch.stack([lid(torch, acts[name], torch.as_tensor(feats.reference_[name], dtype=torch.float64),
                             int(feats.k)) for name in feats.layers_], 1)
        return _decision(torch, self.det.classifier_, F)

    def __call__(self, x):
        r = self.raw(x)
        excess = (r - self.level).clamp_min(0.0)
        return excess.mean(1) if excess.ndim == 2 else excess


# ---------------------------------------------------------------------------------------------- the attack
def adaptive_pgd(torch, net, X: np.ndarray, y: np.ndarray, eps: float, steps: int, penalty):
    """l2 PGD that first fools the classifier, then hides from the detector; per input the adversarial
    iterate of least penalty (``penalty=None``: the first adversarial iterate).

    Each step descends, per input, the margin ``z_y - max_{j != y} z_j`` while the input is classified
    correctly and the penalty once it is not (a step that crosses back is undone by the next ones).
    Returns ``(x_adv, success)``; an input never fooled keeps its clean copy with success False.
    """
    x0 = torch.as_tensor(X)
    yt = torch.as_tensor(y)
    n = x0.shape[0]
    alpha = 2.5 * eps / steps
    x = x0.clone()
    best, best_pen = x0.clone(), torch.full((n,), np.inf, dtype=torch.float64)
    found = torch.zeros(n, dtype=torch.bool)
    active = torch.ones(n, dtype=torch.bool)
    view = (-1,) + (1,) * (x0.ndim - 1)
    for t in range(steps + 1):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = net(x)
            other = z.masked_fill(torch.nn.functional.one_hot(yt, z.shape[1]).bool(), -np.inf).amax(1)
            margin = (z.gather(1, yt[:, None])[:, 0] - other).double()
            pen = penalty(x).double() if penalty is not None else torch.zeros(n, dtype=torch.float64)
            adv = (margin < 0).detach()
            better = adv & (pen.detach() < best_pen) & active
            best[better], best_pen[better] = x.detach()[better], pen.detach()[better]
            found |= adv
            if penalty is None:
                active &= ~adv  # without a penalty: stop each input at its first success
            if t == steps or not active.any():
                break
            (g,) = torch.autograd.grad(torch.where(adv, pen, margin).sum(), x)
        gn = g.reshape(n, -1).norm(dim=1).clamp_min(1e-20).reshape(view)
        step = torch.where(active.reshape(view), alpha * g / gn, torch.zeros_like(g))
        delta = x.detach() - step - x0
        dn = delta.reshape(n, -1).norm(dim=1).reshape(view)
        x = (x0 + delta * torch.clamp(eps / dn.clamp_min(1e-20), max=1.0)).clamp(0.0, 1.0)
    return best.numpy(), found.numpy()


def attack_in_batches(run: C.Run, torch, net, X, y, eps, steps, penalty, *, key: tuple, desc: str):
    """:func:`adaptive_pgd` over batches of ``ATTACK_BATCH`` inputs, each cached (an interrupted run resumes).

    ``key`` names the model, detector, attacker and input set; the inputs themselves, the budget, the
    steps and the seed are added to it. Each batch seeds torch's generator (the BU penalty's dropout
    samples) from its own key, so a resumed run computes what an uninterrupted one does.
    """
    inputs = hashlib.sha256(np.ascontiguousarray(X).tobytes() + np.asarray(y).tobytes()).hexdigest()[:16]
    key = ("adaptive", *key, inputs, float(eps), int(steps), run.args.seed)

    def batch(sub):
        torch.manual_seed(int.from_bytes(hashlib.sha256(repr((key, sub.tolist())).encode()).digest()[:4], "little"))
        adv, ok = adaptive_pgd(torch, net, X[sub], y[sub], eps, steps, penalty)
        return {"adv": adv, "ok": ok}

    res = run.chunked(batch, np.arange(len(X)), chunk=ATTACK_BATCH, desc=desc, key=key)
    return res["adv"], res["ok"]


# ----------------------------------------------------------------------------------------------- scoring
def same_norm_noise(X, adv, rng):
    n = X.shape[0]
    norms = np.linalg.norm((adv - X).reshape(n, -1), axis=1)
    z = rng.standard_normal(X.shape).astype(X.dtype)
    zn = np.linalg.norm(z.reshape(n, -1), axis=1)
    return np.clip(X + z * (norms / zn).reshape((-1,) + (1,) * (X.ndim - 1)), 0.0, 1.0).astype(X.dtype)


def detection_set(X, adv, ok, rng):
    """Clean and noisy copies (0) and adversarial examples (1) of the inputs the attack fooled."""
    Xs, As = X[ok], adv[ok]
    return np.concatenate([Xs, same_norm_noise(Xs, As, rng), As]), np.repeat([0, 0, 1], len(Xs))


def score(detector, X, adv, ok, rng) -> dict:
    from sklearn.metrics import roc_auc_score

    norms = np.linalg.norm((adv - X).reshape(len(X), -1), axis=1)[ok]
    out = dict(success=float(ok.mean()), auc=float("nan"), detected=float("nan"), evasion=float(ok.mean()),
               l2_median=float(np.median(norms)) if ok.any() else float("nan"))
    if ok.sum() < 2:
        return out
    S, lab = detection_set(X, adv, ok, rng)
    s = detector.predict_proba(S)[:, 1]
    thr = np.quantile(s[lab == 0], 1 - FPR)
    flagged = s[lab == 1] > thr
    out.update(auc=float(roc_auc_score(lab, s)), detected=float(flagged.mean()),
               evasion=float((~flagged).sum() / len(X)))
    return out


# ------------------------------------------------------------------------------------------------ driver
def prepare(run: C.Run, ds: str):
    """Model, inputs split 70/30, the Table 4 budget and the detectors trained on stopped BIM."""
    import fisher_ref as fr
    from paper_results.table4_detection import detectors

    D = C.detection_data(run, ds, SIZES.get(run, ds), SIZES.get(run, "train"))
    X, Y, rng, eps = D.X, D.Y, D.rng, D.fgm_p90
    is_test = np.zeros(len(X), dtype=bool)
    is_test[rng.permutation(len(X))[:round(0.3 * len(X))]] = True
    base = fr.bim(X[~is_test], D.backend, epsilon=eps, step_size=eps / 5, n_steps=10, labels=Y[~is_test],
                  bounds=(0.0, 1.0), early_stop=True)
    okb = np.asarray(base.success, dtype=bool)
    S, lab = detection_set(X[~is_test], np.asarray(base.x_adv, dtype=X.dtype), okb, rng)
    dets = detectors(D.backend, D.spec, D.X_train, D.y_train, run.args.seed)
    fitted = {}
    for name in run.progress(DETECTORS, desc=f"{ds}: fitting the detectors on stopped BIM"):
        fitted[name] = dets[name].fit(S, lab)
    return dict(backend=D.backend, spec=D.spec, tag=C.model_tag(run.model_key(ds)), net=D.net, X=X, Y=Y, eps=eps,
                is_test=is_test, detectors=fitted, rng=rng)


def evaluate(run: C.Run, ds: str, steps: int) -> list[dict]:
    import copy

    import torch
    from sklearn.base import clone

    P = prepare(run, ds)
    net = copy.deepcopy(P["net"]).eval()
    for prm in net.parameters():
        prm.requires_grad_(False)
    X, Y, te, eps = P["X"], P["Y"], P["is_test"], P["eps"]
    print(f"{run.script}: {ds}: {len(X)} inputs ({te.sum()} held out), l2 budget {eps:.3f}, {steps} PGD steps",
          flush=True)
    rows = []
    for name in run.progress(DETECTORS, desc=f"{ds}: attacks on the detectors"):
        det = P["detectors"][name]
        torch.manual_seed(run.args.seed)  # the dropout samples of BU's clean reference level
        pen = Penalty(torch, net, name, det, X[~te])
        for attacker, penalty in (("PGD, stopped at success", None), ("adaptive PGD", pen)):
            adv, ok = attack_in_batches(run, torch, net, X[te], Y[te], eps, steps, penalty,
                                        key=(P["tag"], name if penalty else None, attacker, "test"),
                                        desc=f"{ds}: {attacker} against {name}, held-out inputs")
            rows.append(dict(dataset=ds, detector=name, attacker=attacker, trained_on="BIM, stopped",
                             **score(det, X[te], adv, ok, P["rng"])))
        adv_tr, ok_tr = attack_in_batches(run, torch, net, X[~te], Y[~te], eps, steps, pen,
                                          key=(P["tag"], name, "adaptive PGD", "train"),
                                          desc=f"{ds}: adaptive PGD against {name}, training inputs")
        S, lab = detection_set(X[~te], adv_tr, ok_tr, P["rng"])
        retrained = clone(det).fit(S, lab)
        rows.append(dict(dataset=ds, detector=name, attacker="adaptive PGD", trained_on="adaptive PGD",
                         **score(retrained, X[te], adv, ok, P["rng"])))
    for r in rows:
        r.update(epsilon=eps, n_test=int(te.sum()), model=P["spec"].name)
    return rows


def markdown(rows: list[dict]) -> str:
    md = ["# Adaptive attacks on the detectors (AUC, success, detection and evasion rates, %)", ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        md += [f"## {C.DATASET_LABEL[ds]} ({sub[0]['model']}, {sub[0]['n_test']} held-out inputs, "
               f"l2 budget {sub[0]['epsilon']:.3f})", ""]
        md += [C.md_table(["detector", "attacker", "detector trained on", "attack success", "median l2", "AUC",
                           f"detected at {int(FPR * 100)}% FPR", "evasion"],
                          [[r["detector"], r["attacker"], r["trained_on"], C.pct(r["success"], 1),
                            f"{r['l2_median']:.2f}", C.pct(r["auc"], 1),
                            C.pct(r["detected"], 1), C.pct(r["evasion"], 1)] for r in sub])]
    md += ["PGD, stopped at success: the attacker ignores the detector. Detected: the share of "
           f"the successful adversarial examples scored above the threshold that flags {int(FPR * 100)}% of the "
           "clean and noisy copies; evasion: fooled and not flagged, over all held-out inputs.", ""]
    return "\n".join(md)


def main(argv=None) -> dict:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="PGD steps (default 100, 10 with --quick)")
    p.set_defaults(datasets=("mnist",))  # CIFAR-10 only when asked: about 35 min on 2 CPU cores (C double backward passes a step)
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be a positive integer, got {args.steps}")
    run = C.Run("adaptive", args)
    steps = args.steps or (10 if run.quick else 100)
    rows = [r for ds in run.datasets for r in evaluate(run, ds, steps)]
    header = ["dataset", "model", "detector", "attacker", "trained_on", "epsilon", "n_test", "success", "l2_median",
              "auc", "detected", "evasion"]
    run.write_table("adaptive", header, [[r[h] for h in header] for r in rows])
    run.write_markdown("adaptive", markdown(rows))
    return run.finish(dict(rows=rows, steps=steps))


if __name__ == "__main__":
    main()
