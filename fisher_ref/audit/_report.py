"""Plots (matplotlib, Agg) and the self-contained ``report.html`` of ``fisher-ref audit``.

The page embeds every plot as a base64 ``data:`` URI, so it is one file that opens anywhere,
offline. A small script at its end counts the ``<img>`` elements that did not decode
(``naturalWidth == 0``) and writes the count into ``#image-check`` (``data-broken``,
``data-total``): the browser test reads it back.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["write_report", "image_view"]

_OSSA, _FGM, _GREY = "#c0392b", "#2471a3", "#7f8c8d"


def image_view(shape: Sequence[int]):
    """How to draw one input of ``shape`` as an image, or None when it is not one.

    Returns a function mapping an input to an ``(H, W)`` or ``(H, W, 3)`` array: channel-first
    ``(1|3, H, W)``, channel-last ``(H, W, 1|3)``, ``(H, W)``, or a flat square ``(H*W,)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 4:
        return (lambda a: a[0]) if shape[0] == 1 else (lambda a: np.moveaxis(a, 0, -1))
    if len(shape) == 3 and shape[-1] in (1, 3) and min(shape[:2]) >= 4:
        return (lambda a: a[..., 0]) if shape[-1] == 1 else (lambda a: a)
    if len(shape) == 2 and min(shape) >= 4:
        return lambda a: a
    if len(shape) == 1:
        s = math.isqrt(shape[0])
        if s * s == shape[0] and s >= 8:
            return lambda a: a.reshape(s, s)
    return None


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def _fooling_plot(summary: dict, cols: dict, attacked: np.ndarray) -> bytes:
    plt = _plt()
    fr = summary["fooling_rate"]
    eps = np.asarray(fr["epsilons"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    o = [np.nan if v is None else v for v in fr["ossa"]]
    f = [np.nan if v is None else v for v in fr["fgm"]]
    ax.plot(eps, o, "o-", color=_OSSA, label="OSSA (top Fisher eigenvector)")
    ax.plot(eps, f, "s-", color=_FGM, label="FGM (loss gradient)")
    lp = cols["least_perturbation"][attacked]
    if lp.size:
        grid = np.linspace(0, max(eps.max(), 1e-9) * 1.05, 200)
        ax.plot(grid, [(lp <= g).mean() for g in grid], "--", color=_OSSA, alpha=0.5, lw=1,
                label="OSSA, least perturbation <= epsilon")
    ax.set_xlabel("l2 budget epsilon")
    ax.set_ylabel("fooling rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, eps.max() * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Fooling rate over {fr['n']} {'correctly classified ' if 'correct' in fr['over'] else ''}inputs",
                 fontsize=10)
    return _png(fig)


def _eigen_plot(cols: dict) -> bytes:
    plt = _plt()
    w = cols["eigenvalues"]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    pos = w[:, 0][w[:, 0] > 0]
    sec = w[:, 1][w[:, 1] > 0] if w.shape[1] > 1 else np.empty(0)
    if pos.size:
        both = np.log10(np.concatenate([pos, sec]))
        bins = np.linspace(both.min() - 0.1, both.max() + 0.1, 30)
        ax.hist(np.log10(pos), bins=bins, color=_OSSA, alpha=0.75, label="lambda_1 (top)")
        if sec.size:
            ax.hist(np.log10(sec), bins=bins, color=_GREY, alpha=0.5, label="lambda_2")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "all top eigenvalues are zero", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("log10 eigenvalue of the Fisher information G_x")
    ax.set_ylabel("inputs")
    ax.grid(alpha=0.3)
    ax.set_title(f"Top Fisher eigenvalues of {w.shape[0]} inputs", fontsize=10)
    return _png(fig)


def _scatter_plot(summary: dict, cols: dict, attacked: np.ndarray) -> bytes:
    plt = _plt()
    lam = cols["eigenvalues"][:, 0]
    lp = cols["least_perturbation"]
    fin = attacked & np.isfinite(lp) & (lam > 0)
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.scatter(np.log10(lam[fin]), lp[fin], s=10, color=_OSSA, alpha=0.6, edgecolors="none")
    rho = summary["spearman"]["rho"]
    txt = "Spearman rho n/a" if rho is None else f"Spearman rho = {rho:.3f} (n = {summary['spearman']['n']})"
    n_inf = int((attacked & ~np.isfinite(lp)).sum())
    if n_inf:
        txt += f"; {n_inf} not fooled within the search range"
    ax.set_title(txt, fontsize=10)
    ax.set_xlabel("log10 top eigenvalue lambda_1")
    ax.set_ylabel("OSSA least l2 perturbation")
    ax.grid(alpha=0.3)
    return _png(fig)


def _grid_plot(entries: list, x: np.ndarray, x_adv: np.ndarray, pos: dict, view, bounds, title: str,
               names) -> bytes:
    plt = _plt()
    m = len(entries)
    fig, axes = plt.subplots(3, m, figsize=(1.45 * m + 0.6, 4.9), squeeze=False)
    for c, e in enumerate(entries):
        j = pos[e["index"]]
        a, b = view(x[j]), view(x_adv[j].astype(np.float64))
        d = b - a
        if bounds is not None:
            vmin, vmax = bounds
        else:
            vmin, vmax = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        kw = {"cmap": "gray"} if a.ndim == 2 else {}
        if a.ndim == 3:
            a = np.clip((a - vmin) / max(vmax - vmin, 1e-12), 0, 1)
            b = np.clip((b - vmin) / max(vmax - vmin, 1e-12), 0, 1)
            axes[0, c].imshow(a)
            axes[1, c].imshow(b)
            dm = np.abs(d).max(axis=-1)
        else:
            axes[0, c].imshow(a, vmin=vmin, vmax=vmax, **kw)
            axes[1, c].imshow(b, vmin=vmin, vmax=vmax, **kw)
            dm = d
        s = float(np.abs(dm).max()) or 1.0
        axes[2, c].imshow(dm, cmap="RdBu_r" if a.ndim == 2 else "magma",
                          vmin=(-s if a.ndim == 2 else 0), vmax=s)
        lab = e["label"] if e["label"] is not None else e["prediction"]
        adv = e["adv_prediction"]
        axes[0, c].set_title(f"#{e['index']}  {_name(lab, names)}", fontsize=7)
        lp = e["least_perturbation"]
        axes[1, c].set_title(f"-> {_name(adv, names) if adv is not None else '?'}  eps={lp:.2f}"
                             if math.isfinite(lp) else "not fooled", fontsize=7)
        axes[2, c].set_title(f"lambda1={e['top_eigenvalue']:.2g}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    for r, lab in enumerate(("input", "adversarial", "perturbation")):
        axes[r, 0].set_ylabel(lab, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _name(c, names) -> str:
    if c is None:
        return "?"
    if names is not None and 0 <= int(c) < len(names):
        return f"{int(c)} {names[int(c)]}"
    return str(int(c))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _f(v, fmt: str = ".4g") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and not math.isfinite(v):
        return "&infin;" if v > 0 else "n/a"
    return format(v, fmt)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _vuln_table(entries: list, names) -> str:
    rows = []
    for e in entries:
        lab = "" if e["label"] is None else html.escape(_name(e["label"], names))
        rows.append(
            f"<tr><td>{e['index']}</td><td>{lab}</td><td>{html.escape(_name(e['prediction'], names))}</td>"
            f"<td>{_f(e['confidence'], '.3f')}</td><td>{_f(e['top_eigenvalue'])}</td>"
            f"<td>{_f(e['least_perturbation'], '.3f')}</td>"
            f"<td>{html.escape(_name(e['adv_prediction'], names)) if e['adv_prediction'] is not None else ''}</td></tr>")
    return ("<table><thead><tr><th>index</th><th>label</th><th>prediction</th><th>confidence</th>"
            "<th>&lambda;<sub>1</sub></th><th>least l2 perturbation (OSSA)</th><th>adversarial prediction</th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>")


_CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2433}
main{max-width:1080px;margin:0 auto;padding:20px 28px 40px;background:#fff}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
p.lead{color:#4a5466;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{flex:1 1 150px;border:1px solid #dde;border-radius:6px;padding:8px 12px;background:#fafbfd}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#4a5466}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #dde;padding:3px 8px;text-align:right}th{background:#eef1f6}
td:first-child,th:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.plots figure{margin:0;flex:1 1 460px}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:12px;color:#4a5466}
code{background:#eef1f6;padding:1px 4px;border-radius:3px}
dl{font-size:13px}dt{font-weight:bold;margin-top:6px}dd{margin-left:16px}
#image-check{font-size:11px;color:#8a93a3;margin-top:24px}
"""

_SCRIPT = """
<script>
(function () {
  function check() {
    var imgs = document.images, broken = 0;
    for (var i = 0; i < imgs.length; i++) {
      if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++;
    }
    var el = document.getElementById('image-check');
    el.setAttribute('data-total', String(imgs.length));
    el.setAttribute('data-broken', String(broken));
    el.textContent = imgs.length + ' images embedded, ' + broken + ' failed to load';
  }
  if (document.readyState === 'complete') check(); else window.addEventListener('load', check);
})();
</script>
"""


_GRIDS = (("by_least_perturbation", "vulnerable_least_perturbation.png", "Smallest OSSA least perturbation"),
          ("by_top_eigenvalue", "vulnerable_top_eigenvalue.png", "Largest top eigenvalue"))


def write_report(write: Callable[[str, bytes], None], summary: dict, cols: dict, x: np.ndarray, x_adv: np.ndarray,
                 *, class_names=None) -> list[str]:
    """Make the PNG plots and ``report.html`` and hand each to ``write(name, bytes)``.

    Parameters
    ----------
    write : callable
        Writes one file of the report (the audit writes it atomically into its folder).
    summary : dict
        The audit summary (``summary.json`` content so far).
    cols : dict of ndarray
        Merged per-input results.
    x, x_adv : ndarray of shape (n, *input_shape)
        Inputs and the OSSA examples at the least perturbation.
    class_names : list of str, optional

    Returns
    -------
    list of str
        The names of the files written, ``report.html`` last.
    """
    has_labels = summary["data"]["has_labels"]
    attacked = (cols["prediction"] == cols["label"]) if has_labels else np.ones(cols["index"].shape[0], dtype=bool)
    pngs = {"fooling_rate.png": _fooling_plot(summary, cols, attacked),
            "eigenvalues.png": _eigen_plot(cols),
            "scatter.png": _scatter_plot(summary, cols, attacked)}
    view = image_view(x.shape[1:])
    pos = {int(i): j for j, i in enumerate(cols["index"])}
    mv = summary["most_vulnerable"]
    grids = []
    for key, fname, title in (_GRIDS if view is not None else ()):
        if mv[key]:
            pngs[fname] = _grid_plot(mv[key], x, x_adv, pos, view, summary["config"]["bounds"], title, class_names)
            grids.append((key, fname))
    for name, png in pngs.items():
        write(name, png)
    write("report.html", _html(summary, pngs, grids, class_names).encode("utf-8"))
    return [*pngs, "report.html"]


def _figure(pngs: dict, name: str, caption: str) -> str:
    return (f'<figure><img alt="{html.escape(name)}" src="{_data_uri(pngs[name])}"><figcaption>{caption}'
            "</figcaption></figure>")


def _cards(summary: dict) -> str:
    fr, sp, lp = summary["fooling_rate"], summary["spearman"], summary["least_perturbation"]
    eps = fr["epsilons"]
    i_mid = min(range(len(eps)), key=lambda i: abs(eps[i] - 2.0))
    cards = [
        (f"{summary['n_inputs']}", "inputs audited"),
        (_pct(summary["accuracy"]), "accuracy" if summary["accuracy"] is not None else "accuracy (no labels)"),
        (_pct(fr["ossa"][i_mid]), f"OSSA fooling rate at &epsilon; = {eps[i_mid]:g}"),
        (_pct(fr["fgm"][i_mid]), f"FGM fooling rate at &epsilon; = {eps[i_mid]:g}"),
        (_f(lp["stats"]["median"] if lp["stats"] else None, ".3f"), "median least l2 perturbation (OSSA)"),
        (_f(sp["rho"], ".3f"), "Spearman &rho;(log &lambda;<sub>1</sub>, least perturbation)"),
    ]
    return "".join(f'<div class="card"><b>{v}</b><span>{t}</span></div>' for v, t in cards)


def _vulnerable(summary: dict, pngs: dict, grids: list, names) -> str:
    vul = []
    for key, title in (("by_least_perturbation", "Smallest least perturbation"),
                       ("by_top_eigenvalue", "Largest top eigenvalue")):
        entries = summary["most_vulnerable"][key]
        vul.append(f"<h3>{title}</h3>")
        grid = next((f for k, f in grids if k == key), None)
        if grid:
            vul.append(_figure(pngs, grid, "Rows: the input, the OSSA adversarial example at its least perturbation, "
                                           "and the perturbation (scaled to its own range). Titles: index and label; "
                                           "the adversarial prediction and &epsilon;; the top eigenvalue."))
        vul.append(_vuln_table(entries, names) if entries else "<p>No input qualifies.</p>")
    return "".join(vul)


def _configuration(summary: dict, pngs: dict) -> str:
    m, d, cfg, run = summary["model"], summary["data"], summary["config"], summary["run"]
    esc = html.escape
    norm = d.get("normalization")
    prep = [f"scale: {esc(str(d.get('scale')))}", f"layout: {esc(str(d.get('layout')))}"]
    if d.get("resize"):
        prep.append(f"resize: {d['resize'][0]} x {d['resize'][1]}")
    if norm:
        prep.append(f"normalisation (x - mean) / std applied inside the model: mean {norm['mean']}, std {norm['std']}")
    file_items = "".join(f"<li><code>{esc(n)}</code></li>" for n in sorted(pngs) + ["summary.json", "shards/"])
    eps = ", ".join(f"{e:g}" for e in cfg["epsilons"])
    dask = "" if cfg["scheduler"] is None else f"on Dask ({esc(str(cfg['scheduler']))})"
    return f"""<dl>
<dt>model</dt><dd><code>{esc(m['path'])}</code> (sha256 {esc(m['sha256'][:16])}&hellip;), input <code>{esc(m['input_name'])}</code>,
output <code>{esc(m['output_name'])}</code> read as {esc(m['output_kind'])}</dd>
<dt>data</dt><dd><code>{esc(str(d.get('path')))}</code> ({esc(str(d.get('format')))}, raw shape {esc(str(tuple(d['raw_shape'])))}
{esc(d['raw_dtype'])}); {'; '.join(prep)}</dd>
<dt>attacks</dt><dd>k = {cfg['k']} eigenvalues, &epsilon; &isin; {{{eps}}},
bounds {esc(str(cfg['bounds']))}, {cfg['n_shards']} shards of {cfg['shard_size']}
{dask}; compute {run['compute_seconds']:.1f} s</dd>
<dt>files in this folder</dt><dd><ul>{file_items}</ul></dd>
</dl>"""


def _html(summary: dict, pngs: dict, grids: list, names) -> str:
    m, d, cfg, run = summary["model"], summary["data"], summary["config"], summary["run"]
    fr, lp = summary["fooling_rate"], summary["least_perturbation"]
    esc = html.escape
    model_name = esc(Path(m["path"]).name)
    bounds = cfg["bounds"]
    clipped = "" if bounds is None else f" (adversarial inputs clipped to [{bounds[0]:g}, {bounds[1]:g}])"
    rate_rows = "".join(f"<tr><td>{e:g}</td><td>{_pct(o)}</td><td>{_pct(f)}</td></tr>"
                        for e, o, f in zip(fr["epsilons"], fr["ossa"], fr["fgm"]))
    fooling_fig = _figure(pngs, "fooling_rate.png", "Fooling rate against the l2 budget. The dashed line is the share "
                                                    "of inputs whose OSSA least perturbation is at most &epsilon;.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>fisher-ref audit: {model_name}</title><style>{_CSS}</style></head>
<body><main>
<h1>Fisher information audit of <code>{model_name}</code></h1>
<p class="lead">{summary['n_inputs']} inputs from {esc(str(d.get('source')))}; {m['n_classes']} classes;
input {esc(str(tuple(m['input_shape'])))} ({esc(m['dtype'])}); ONNX Runtime {esc(', '.join(m['providers']))}.
Generated by fisher-ref {esc(run['fisher_ref_version'])} on {esc(run['finished'])}.</p>
<div class="cards">{_cards(summary)}</div>

<h2>Fooling rate</h2>
<p>Share of the {fr['n']} {esc(fr['over'])} whose prediction changes under a one-step attack of l2 size
&epsilon;{clipped}.
OSSA moves along the top eigenvector of the input Fisher information (Algorithm 1 of Zhao et al., AAAI 2019);
FGM along the loss gradient.</p>
<div class="plots">{fooling_fig}
<table><thead><tr><th>&epsilon;</th><th>OSSA</th><th>FGM</th></tr></thead><tbody>{rate_rows}</tbody></table></div>

<h2>Fisher spectrum and vulnerability</h2>
<p>&lambda;<sub>1</sub> is the largest eigenvalue of G<sub>x</sub> = &sum;<sub>i</sub> p<sub>i</sub> g<sub>i</sub> g<sub>i</sub><sup>T</sup>
(eq. 4): KL(p(x) &#8214; p(x + &eta;)) &asymp; &frac12; &lambda;<sub>1</sub> &#8214;&eta;&#8214;<sup>2</sup> along its eigenvector.
The least perturbation is the smallest OSSA budget in [0, {cfg['max_epsilon']:g}] that changes the prediction
(binary search, tolerance {cfg['tol']:g}); {_pct(lp['fooled_within_max_epsilon'])} of the inputs are fooled within that range.
The paper's Figure 3: inputs with a larger &lambda;<sub>1</sub> need a smaller perturbation (a negative correlation).</p>
<div class="plots">{_figure(pngs, 'eigenvalues.png', 'Histogram of the top two eigenvalues (log scale).')}
{_figure(pngs, 'scatter.png', 'Top eigenvalue against the OSSA least perturbation, one point per input.')}</div>

<h2>Most vulnerable inputs</h2>
{_vulnerable(summary, pngs, grids, names)}

<h2>Configuration and files</h2>
{_configuration(summary, pngs)}
<div id="image-check" data-total="" data-broken="">image check not run</div>
</main>
{_SCRIPT}
</body></html>
"""
