"""Plots (matplotlib, Agg) and the self-contained ``report.html`` of ``fisher-ref audit``.

The page embeds every plot as a base64 ``data:`` URI, so it is one file that opens anywhere,
offline; its list of the folder's files links each one by a relative address, so the links work
wherever the folder is opened or copied. A small script at its end counts the ``<img>`` elements
that did not decode (``naturalWidth == 0``) and writes the count into ``#image-check``
(``data-broken``, ``data-total``): the browser test reads it back.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import quote

import numpy as np

from ._outdir import MANIFEST
from ._shards import shard_names
from ._summary import attacked as attacked_inputs, fooling_rate_population
from .._text import count

__all__ = ["write_report", "image_view", "coincidence_notes", "panel_titles", "folder_listing"]

#: How each fooling-rate curve is drawn. Colour, marker, marker fill and line style all differ, so
#: two curves on top of each other stay told apart (FGM's hollow squares frame OSSA's dots).
_CURVES = {
    "fgm": dict(color="#1f5fa8", marker="s", ls="--", lw=1.6, ms=9, mfc="none", mew=1.6, zorder=2,
                label="FGM (loss gradient)"),
    "ossa": dict(color="#c0392b", marker="o", ls="-", lw=1.8, ms=5, zorder=3, label="OSSA (top Fisher eigenvector)"),
}
_LEAST = dict(color="#7d3c98", ls=":", lw=1.8, zorder=1, label="share with OSSA least perturbation \u2264 \u03b5")
_ATTACK = {"ossa": "OSSA", "fgm": "FGM"}
#: Two curves closer than this (a fraction of the inputs) at every epsilon are drawn on top of each
#: other at the plot's scale (about one marker): the figure and its caption say so.
COINCIDE_WITHIN = 0.03

#: The report's plots in page order: file name, what it shows (the file list), caption (HTML).
_PLOTS = {
    "fooling_rate.png": ("the fooling-rate plot",
                         "Fooling rate against the l2 budget &epsilon;. The dotted line is the share of inputs whose "
                         "OSSA least perturbation is at most &epsilon;."),
    "eigenvalues.png": ("the histogram of the top two Fisher eigenvalues",
                        "Histogram of the top two eigenvalues (log scale)."),
    "scatter.png": ("the scatter of the top eigenvalue against the least perturbation",
                    "Top eigenvalue against the OSSA least perturbation, one point per input."),
    "vulnerable_least_perturbation.png": ("the inputs with the smallest OSSA least perturbation, as images", None),
    "vulnerable_top_eigenvalue.png": ("the inputs with the largest top eigenvalue, as images", None),
}
_GRIDS = (("by_least_perturbation", "vulnerable_least_perturbation.png", "smallest OSSA least perturbation",
           "Smallest least perturbation"),
          ("by_top_eigenvalue", "vulnerable_top_eigenvalue.png", "largest top eigenvalue", "Largest top eigenvalue"))


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


# ------------------------------------------------------------------------------ the fooling-rate plot
def coincidence_notes(curves: dict, *, within: float = COINCIDE_WITHIN) -> list[str]:
    """A sentence for each pair of fooling-rate curves that lie within ``within`` at every epsilon.

    Parameters
    ----------
    curves : dict
        Attack key (``"ossa"``, ``"fgm"``) to its fooling rates, one per epsilon (None where
        there was nothing to attack).
    within : float
        The largest gap, as a fraction of the inputs, at which two curves count as coinciding.

    Returns
    -------
    list of str
        E.g. ``"OSSA and FGM coincide within 1.2 percentage points at every epsilon"``: the largest
        gap, rounded to a tenth of a point as the report's table of rates is.
    """
    notes = []
    keys = list(curves)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            gaps = [abs(u - v) for u, v in zip(curves[a], curves[b]) if u is not None and v is not None]
            if not gaps or max(gaps) > within:
                continue
            pair = f"{_ATTACK.get(a, a)} and {_ATTACK.get(b, b)}"
            points = round(100 * max(gaps), 1)
            notes.append(f"{pair} coincide at every epsilon" if max(gaps) == 0 else
                         f"{pair} coincide within {points:.1f} percentage points at every epsilon")
    return notes


def _fooling_plot(summary: dict, cols: dict, attacked: np.ndarray) -> bytes:
    plt = _plt()
    fr = summary["fooling_rate"]
    eps = np.asarray(fr["epsilons"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for a, style in _CURVES.items():
        ax.plot(eps, [np.nan if v is None else v for v in fr[a]], **style)
    lp = np.sort(cols["least_perturbation"][attacked])
    x_max = max(float(eps.max()), 1e-9) * 1.05
    if lp.size:
        grid = np.linspace(0, x_max, 400)
        ax.plot(grid, np.searchsorted(lp, grid, side="right") / lp.size, **_LEAST)
    ax.set_xlabel("l2 budget \u03b5")
    ax.set_ylabel("fooling rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, x_max)
    ax.grid(alpha=0.3)
    notes = coincidence_notes({a: fr[a] for a in _ATTACK})
    leg = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, fontsize=8, frameon=False,
                    title=("\n".join(n.replace("epsilon", "\u03b5") + ": the curves overlap" for n in notes)
                           or None), title_fontsize=8)
    leg.get_title().set_color("#4a5466")
    ax.set_title(f"Fooling rate over {fooling_rate_population(fr, why=False)}", fontsize=10)
    return _png(fig)


# ------------------------------------------------------------------------------ spectrum plots
def _eigen_plot(summary: dict, cols: dict) -> bytes:
    plt = _plt()
    w = cols["eigenvalues"]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    pos = w[:, 0][w[:, 0] > 0]
    sec = w[:, 1][w[:, 1] > 0] if w.shape[1] > 1 else np.empty(0)
    if pos.size:
        both = np.log10(np.concatenate([pos, sec]))
        bins = np.linspace(both.min() - 0.1, both.max() + 0.1, 30)
        ax.hist(np.log10(pos), bins=bins, color=_CURVES["ossa"]["color"], alpha=0.75,
                label=r"$\lambda_1$ (largest)")
        if sec.size:
            ax.hist(np.log10(sec), bins=bins, histtype="step", color="#34495e", lw=1.6, ls="--",
                    label=r"$\lambda_2$ (second)")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "all top eigenvalues are zero", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(r"$\log_{10}$ eigenvalue of the Fisher information $G_x$")
    ax.set_ylabel("inputs")
    ax.grid(alpha=0.3)
    zero = summary["n_zero_spectrum"]
    ax.set_title(f"Top Fisher eigenvalues of {count(w.shape[0], 'input')}"
                 + (f" ({zero} with $\\lambda_1$ = 0 not shown)" if zero else ""), fontsize=10)
    return _png(fig)


def _scatter_plot(summary: dict, cols: dict, attacked: np.ndarray) -> bytes:
    plt = _plt()
    lam = cols["eigenvalues"][:, 0]
    lp = cols["least_perturbation"]
    fin = attacked & np.isfinite(lp) & (lam > 0)
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.scatter(np.log10(lam[fin]), lp[fin], s=10, color=_CURVES["ossa"]["color"], alpha=0.6, edgecolors="none")
    rho = summary["spearman"]["rho"]
    txt = "Spearman \u03c1 n/a" if rho is None else f"Spearman \u03c1 = {rho:.3f} (n = {summary['spearman']['n']})"
    n_inf = int((attacked & ~np.isfinite(lp)).sum())
    if n_inf:
        txt += f"; {n_inf} not fooled within the search range"
    ax.set_title(txt, fontsize=10)
    ax.set_xlabel(r"$\log_{10} \lambda_1$ (top Fisher eigenvalue)")
    ax.set_ylabel("OSSA least l2 perturbation")
    ax.grid(alpha=0.3)
    return _png(fig)


# ------------------------------------------------------------------------------ the image grids
def _name(c, names) -> str:
    if c is None:
        return "?"
    if names is not None and 0 <= int(c) < len(names):
        return f"{int(c)} {names[int(c)]}"
    return str(int(c))


def panel_titles(entry: dict, names=None, *, max_epsilon: float) -> tuple[str, str, str]:
    """The titles of one column of an image grid: above the input, the adversarial example and the
    perturbation.

    The first reads ``"input #466\\nlabel 8 → 3"``: the input's index in the data, its label (its
    prediction where the data has no labels) and the prediction on the OSSA adversarial example.
    """
    known = entry["label"] is not None
    start = _name(entry["label"] if known else entry["prediction"], names)
    lp = entry["least_perturbation"]
    fooled = math.isfinite(lp) and entry["adv_prediction"] is not None
    change = f"{'label' if known else 'prediction'} {start}"
    change += f" \u2192 {_name(entry['adv_prediction'], names)}" if fooled else ", not fooled"
    if len(change) > 20:  # wider than a column at 9 pt: the arrow starts a line
        change = change.replace(" \u2192 ", "\n\u2192 ").replace(", not", "\nnot")
    adversarial = f"\u03b5 = {lp:.3g}" if fooled else f"none within \u03b5 \u2264 {max_epsilon:g}"
    return f"input #{entry['index']}\n{change}", adversarial, f"$\\lambda_1$ = {entry['top_eigenvalue']:.3g}"


def _column_images(x: np.ndarray, x_adv: np.ndarray, j: int, view):
    """The input, the adversarial example and their difference, as images (float64)."""
    a = np.asarray(view(x[j]), dtype=np.float64)
    b = np.asarray(view(x_adv[j]), dtype=np.float64)
    return a, b, b - a


def _draw_perturbation(fig, ax, d: np.ndarray) -> None:
    """The perturbation on its own symmetric scale (largest |change| over the channels for colour
    images), with a colour bar under it; an empty panel says why it is empty."""
    rgb = d.ndim == 3
    dm = np.abs(d).max(axis=-1) if rgb else d
    s = float(np.abs(dm).max())
    im = ax.imshow(dm, cmap="magma" if rgb else "RdBu_r", vmin=0 if rgb else -(s or 1.0), vmax=s or 1.0)
    if s == 0:
        ax.text(0.5, 0.5, "not fooled:\nno perturbation", ha="center", va="center", fontsize=9,
                transform=ax.transAxes)
        return
    # an inset under the panel, so the panel keeps the size of its neighbours
    cb = fig.colorbar(im, cax=ax.inset_axes((0.0, -0.13, 1.0, 0.07)), orientation="horizontal")
    cb.ax.tick_params(labelsize=7, length=2, pad=1)
    ticks = [0.0, s] if rgb else [-s, 0.0, s]
    cb.set_ticks(ticks, labels=[f"{t:.2g}" for t in ticks])
    labels = cb.ax.get_xticklabels()  # the end labels inside the bar: the columns stay evenly spaced
    labels[0].set_horizontalalignment("left")
    labels[-1].set_horizontalalignment("right")


def _grid_plot(entries: list, x: np.ndarray, x_adv: np.ndarray, pos: dict, view, config: dict, title: str,
               names) -> bytes:
    plt = _plt()
    m = len(entries)
    fig, axes = plt.subplots(3, m, figsize=(1.4 * m + 1.4, 5.1), squeeze=False, layout="constrained")
    images = [_column_images(x, x_adv, pos[e["index"]], view) for e in entries]
    rgb = images[0][0].ndim == 3
    if config["bounds"] is not None:
        lo, hi = config["bounds"]
    else:  # one range for every column, so that the images compare
        lo = min(float(min(a.min(), b.min())) for a, b, _ in images)
        hi = max(float(max(a.max(), b.max())) for a, b, _ in images)
    span = max(hi - lo, 1e-12)
    for c, (e, (a, b, d)) in enumerate(zip(entries, images)):
        for r, img in enumerate((a, b)):
            if rgb:
                shown = axes[r, c].imshow(np.clip((img - lo) / span, 0, 1))
            else:
                shown = axes[r, c].imshow(img, cmap="gray", vmin=lo, vmax=hi)
        _draw_perturbation(fig, axes[2, c], d)
        for ax, text in zip(axes[:, c], panel_titles(e, names, max_epsilon=config["max_epsilon"])):
            ax.set_title(text, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    change = "largest |change|\nover the channels" if rgb else "perturbation\n(adversarial \u2212 input)"
    for r, lab in enumerate(("input", "OSSA adversarial\n(least perturbation)", change)):
        axes[r, 0].set_ylabel(lab, fontsize=9)
    if not rgb:
        cb = fig.colorbar(shown, ax=axes[:2, :].ravel().tolist(), shrink=0.8, aspect=25, pad=0.01)
        cb.set_label("pixel value", fontsize=9)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


# ------------------------------------------------------------------------------ the page
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


def _link(name: str, shown: str | None = None) -> str:
    """A relative link to ``name`` (a path inside the folder) showing the name verbatim."""
    return f'<a href="{html.escape(quote(name))}"><code>{html.escape(shown or name)}</code></a>'


def folder_listing(summary: dict, pngs: Sequence[str]) -> list[tuple[str, str]]:
    """What the audit's folder holds, in the report's order: ``(link HTML, description HTML)``.

    Every file the audit writes: ``report.html``, ``results.csv``, ``summary.json``, the plots,
    ``manifest.json`` and the shards (the folder, and its first and last shard's files).
    """
    cfg = summary["config"]
    rows = [(_link("report.html"), "this page (its plots are embedded, so it also opens on its own)"),
            (_link("results.csv"), "one row per input: label, prediction, confidence, the top eigenvalues, whether "
                                   "OSSA and FGM fool it at each &epsilon;, its OSSA least perturbation and the "
                                   "prediction on that adversarial example"),
            (_link("summary.json"), "the numbers of this page and the audit's configuration, machine-readable")]
    rows += [(_link(name), f"{_PLOTS[name][0]} (PNG)") for name in pngs]
    rows.append((_link(MANIFEST), "what the audit wrote, with SHA-256 checksums and the options fingerprint: "
                                  "<code>--resume</code> and <code>--force</code> read it"))
    n = cfg["n_shards"]
    ends = [0] if n == 1 else [0, n - 1]
    files = [", ".join(_link(p, Path(p).name) for p in sorted(shard_names(i), key=lambda p: p[-3:]))
             for i in ends]
    shards = (f"{count(n, 'shard')} of up to {cfg['shard_size']} inputs: " + " &hellip; ".join(files)
              + "; each a <code>.csv</code> (its rows of <code>results.csv</code>) and a <code>.npz</code> (the exact "
                "arrays and the adversarial examples). <code>--resume</code> reuses them")
    rows.append((_link(Path(shard_names(0)[0]).parent.as_posix() + "/"), shards))
    return rows


def _files_table(summary: dict, pngs: Sequence[str]) -> str:
    body = "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in folder_listing(summary, pngs))
    return ('<table class="files" id="files"><thead><tr><th>file</th><th>what it holds</th></tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _vuln_table(entries: list, names) -> str:
    rows = []
    for e in entries:
        lab = "" if e["label"] is None else html.escape(_name(e["label"], names))
        rows.append(
            f"<tr><td>{e['index']}</td><td>{lab}</td><td>{html.escape(_name(e['prediction'], names))}</td>"
            f"<td>{_f(e['confidence'], '.3f')}</td><td>{_f(e['top_eigenvalue'])}</td>"
            f"<td>{_f(e['least_perturbation'], '.3f')}</td>"
            f"<td>{html.escape(_name(e['adv_prediction'], names)) if e['adv_prediction'] is not None else ''}</td></tr>")
    return ("<table><thead><tr><th>input #</th><th>label</th><th>prediction</th><th>confidence</th>"
            "<th>&lambda;<sub>1</sub></th><th>least l2 perturbation (OSSA)</th><th>adversarial prediction</th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>")


# links carry no underline: it would hide the underscores in the file names
_CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2433}
main{max-width:1080px;margin:0 auto;padding:20px 28px 40px;background:#fff}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
p.lead{color:#4a5466;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{flex:1 1 150px;border:1px solid #dde;border-radius:6px;padding:8px 12px;background:#fafbfd}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#4a5466}
#how-to-read{background:#f7f9fc;border:1px solid #dde;border-radius:6px;padding:4px 16px 10px;margin:18px 0}
#how-to-read h2{border:none;margin:10px 0 4px}#how-to-read dl{font-size:14px;line-height:1.45}
#how-to-read dd{margin:2px 0 6px 16px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #dde;padding:3px 8px;text-align:right}th{background:#eef1f6}
td:first-child,th:first-child{text-align:left}
table.files th,table.files td{text-align:left;vertical-align:top;padding:4px 8px;line-height:1.5}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.plots figure{margin:0;flex:1 1 460px}
figure{margin:8px 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:12px;color:#4a5466}
code{background:#eef1f6;padding:1px 4px;border-radius:3px}
a{text-decoration:none}a code{color:#1f5fa8}a:hover code{text-decoration:underline}
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

#: For an engineer who has not read the paper; filled in by ``_how_to_read``.
_HOW_TO_READ = """<section id="how-to-read"><h2>How to read this report</h2>
<p>For each input the audit asks two questions: how small a change to the input flips the model's
prediction, and can that be foreseen from the model's gradients alone, without attacking it?</p>
<dl>
<dt>&lambda;<sub>1</sub>, the top Fisher eigenvalue</dt>
<dd>The Fisher information matrix G<sub>x</sub> of an input says how fast the model's output probabilities
change when the input moves: adding a small change &eta; moves them by
KL(p(x) &#8214; p(x + &eta;)) &asymp; &frac12; &eta;<sup>T</sup>G<sub>x</sub>&eta;. Its largest eigenvalue
&lambda;<sub>1</sub> is that sensitivity in the worst direction (the top eigenvector). A large
&lambda;<sub>1</sub> marks an input that a small change can flip. It is computed from the model's gradients
at the input; no attack is involved.</dd>
<dt>&epsilon; and the two attacks</dt>
<dd>&epsilon; is the l2 length of the change added to an input, in the units the model reads{scale}.
OSSA (one-step spectral attack) adds &epsilon; times the top eigenvector of G<sub>x</sub>; FGM (fast
gradient method, the usual baseline) adds &epsilon; times the normalised loss gradient{clip}. The <em>least
perturbation</em> of an input is the smallest &epsilon; at which OSSA changes its prediction (binary search
up to {max_eps}).</dd>
<dt>Fooling-rate curve</dt>
<dd>For each &epsilon;, the share of the {over} whose prediction the attack changes. The earlier a curve
rises, the more fragile the model. Where two curves lie on top of each other the figure says so.</dd>
<dt>Histogram</dt>
<dd>How &lambda;<sub>1</sub> (filled) and &lambda;<sub>2</sub> (outline) spread over the inputs, on a log scale:
the inputs far to the right are the sensitive ones.</dd>
<dt>Scatter</dt>
<dd>Each input's &lambda;<sub>1</sub> against its least perturbation. Points falling to the right (Spearman
&rho; near &minus;1) mean that &lambda;<sub>1</sub> ranks the inputs by how easily they are fooled, so it can
flag fragile inputs without attacking them (Figure 3 of Zhao et al., AAAI 2019).</dd>
<dt>Panels</dt>
<dd>{panels}</dd>
<dt>A vulnerable input</dt>
<dd>{vulnerable} that a small change misclassifies. The report lists those with the smallest least perturbation
and those with the largest &lambda;<sub>1</sub>.</dd>
</dl></section>"""


def _panels_text(has_labels: bool, rgb: bool) -> str:
    diff = ("the largest change over the colour channels" if rgb else
            "red where the attack raised the value, blue where it lowered it")
    reads = ("input 466 of the data, labelled (and classified) 8, classified 3 after the attack" if has_labels else
             "input 466 of the data, classified 8 before the attack and 3 after it")
    return (f"One column per input: the input, its OSSA adversarial example at the least perturbation, and the "
            f"difference ({diff}; each panel has its own colour bar). A title such as &ldquo;input #466, "
            f"{'label' if has_labels else 'prediction'} 8 &rarr; 3&rdquo; reads: {reads}.")


def _how_to_read(summary: dict, x: np.ndarray, *, panels: bool) -> str:
    cfg, has_labels = summary["config"], summary["data"]["has_labels"]
    bounds = cfg["bounds"]
    norms = np.linalg.norm(x.reshape(x.shape[0], -1).astype(np.float64), axis=1)
    scale = "" if bounds is None else f" (here values in [{bounds[0]:g}, {bounds[1]:g}])"
    if norms.size and np.median(norms) > 0:
        scale += f"; the median input has l2 norm {np.median(norms):.3g}"
    view = image_view(x.shape[1:])
    rgb = view is not None and x.shape[0] > 0 and np.ndim(view(x[0])) == 3
    return _HOW_TO_READ.format(
        scale=scale, clip="" if bounds is None else ", and the result is clipped to the bounds",
        max_eps=f"{cfg['max_epsilon']:g}", over="correctly classified inputs" if has_labels else
        "inputs (without labels, each input's prediction is what the attack tries to change)",
        vulnerable="A correctly classified input" if has_labels else "An input",
        panels=(_panels_text(has_labels, rgb) if panels else
                "Not drawn for this audit: its inputs are not images. The tables list the most vulnerable inputs."))


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
    attacked = attacked_inputs(cols, summary["data"]["has_labels"])
    pngs = {"fooling_rate.png": _fooling_plot(summary, cols, attacked),
            "eigenvalues.png": _eigen_plot(summary, cols),
            "scatter.png": _scatter_plot(summary, cols, attacked)}
    view = image_view(x.shape[1:])
    pos = {int(i): j for j, i in enumerate(cols["index"])}
    mv = summary["most_vulnerable"]
    over = "correctly classified input" if summary["data"]["has_labels"] else "input"
    for key, fname, what, _ in (_GRIDS if view is not None else ()):
        if mv[key]:
            title = f"The {count(len(mv[key]), over)} with the {what}"
            pngs[fname] = _grid_plot(mv[key], x, x_adv, pos, view, summary["config"], title, class_names)
    for name, png in pngs.items():
        write(name, png)
    write("report.html", _html(summary, pngs, x, class_names).encode("utf-8"))
    return [*pngs, "report.html"]


def _figure(pngs: dict, name: str, caption: str) -> str:
    return (f'<figure><img alt="{html.escape(name)}" src="{_data_uri(pngs[name])}"><figcaption>{caption} '
            f"({_link(name)})</figcaption></figure>")


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


_GRID_CAPTION = ("Each column is one input, titled with its index in the data and its {who} &rarr; the prediction on "
                 "its OSSA adversarial example. Rows: the input; the adversarial example at the least perturbation "
                 "&epsilon;; the perturbation (adversarial &minus; input) on its own scale, read off its colour bar, "
                 "with the input's top eigenvalue &lambda;<sub>1</sub>.")


def _vulnerable(summary: dict, pngs: dict, names) -> str:
    vul = []
    who = "label" if summary["data"]["has_labels"] else "prediction (the data has no labels)"
    for key, fname, _, heading in _GRIDS:
        entries = summary["most_vulnerable"][key]
        vul.append(f"<h3>{heading}</h3>")
        if fname in pngs:
            vul.append(_figure(pngs, fname, _GRID_CAPTION.format(who=who)))
        vul.append(_vuln_table(entries, names) if entries else "<p>No input qualifies.</p>")
    return "".join(vul)


def _configuration(summary: dict) -> str:
    m, d, cfg, run = summary["model"], summary["data"], summary["config"], summary["run"]
    esc = html.escape
    norm = d.get("normalization")
    prep = [f"scale: {esc(str(d.get('scale')))}", f"layout: {esc(str(d.get('layout')))}"]
    if d.get("resize"):
        prep.append(f"resize: {d['resize'][0]} x {d['resize'][1]}")
    if norm:
        prep.append(f"normalisation (x - mean) / std applied inside the model: mean {norm['mean']}, std {norm['std']}")
    eps = ", ".join(f"{e:g}" for e in cfg["epsilons"])
    dask = "" if cfg["scheduler"] is None else f" on Dask ({esc(str(cfg['scheduler']))})"
    return f"""<dl>
<dt>model</dt><dd><code>{esc(m['path'])}</code> (sha256 {esc(m['sha256'][:16])}&hellip;), input <code>{esc(m['input_name'])}</code>,
output <code>{esc(m['output_name'])}</code> read as {esc(m['output_kind'])}</dd>
<dt>data</dt><dd><code>{esc(str(d.get('path')))}</code> ({esc(str(d.get('format')))}, raw shape {esc(str(tuple(d['raw_shape'])))}
{esc(d['raw_dtype'])}); {'; '.join(prep)}</dd>
<dt>attacks</dt><dd>k = {cfg['k']} eigenvalues, &epsilon; &isin; {{{eps}}},
bounds {esc(str(cfg['bounds']))}, {count(cfg['n_shards'], 'shard')} of {cfg['shard_size']}{dask};
compute {run['compute_seconds']:.1f} s</dd>
</dl>"""


def _fooling_section(summary: dict, pngs: dict) -> str:
    fr, cfg = summary["fooling_rate"], summary["config"]
    bounds = cfg["bounds"]
    clipped = "" if bounds is None else f" (adversarial inputs clipped to [{bounds[0]:g}, {bounds[1]:g}])"
    rate_rows = "".join(f"<tr><td>{e:g}</td><td>{_pct(o)}</td><td>{_pct(f)}</td></tr>"
                        for e, o, f in zip(fr["epsilons"], fr["ossa"], fr["fgm"]))
    notes = coincidence_notes({a: fr[a] for a in _ATTACK})
    over = (count(fr["n"], "correctly classified input") if summary["data"]["has_labels"] else
            f"{count(fr['n'], 'input')} (no labels: the attack changes each input's prediction)")
    caption = _PLOTS["fooling_rate.png"][1] + "".join(
        f" {n.replace('epsilon', '&epsilon;')}: their curves overlap (FGM is drawn with hollow squares and a dashed "
        "line, OSSA with dots and a solid line)." for n in notes)
    return f"""<h2>Fooling rate</h2>
<p>Share of the {over} whose prediction changes under a one-step attack of l2 size &epsilon;{clipped}.
OSSA moves along the top eigenvector of the input Fisher information (Algorithm 1 of Zhao et al., AAAI 2019);
FGM along the loss gradient.</p>
<div class="plots">{_figure(pngs, "fooling_rate.png", caption)}
<table><thead><tr><th>&epsilon;</th><th>OSSA</th><th>FGM</th></tr></thead><tbody>{rate_rows}</tbody></table></div>"""


def _spectrum_section(summary: dict, pngs: dict) -> str:
    cfg, lp = summary["config"], summary["least_perturbation"]
    return f"""<h2>Fisher spectrum and vulnerability</h2>
<p>&lambda;<sub>1</sub> is the largest eigenvalue of G<sub>x</sub> = &sum;<sub>i</sub> p<sub>i</sub> g<sub>i</sub> g<sub>i</sub><sup>T</sup>
(eq. 4): KL(p(x) &#8214; p(x + &eta;)) &asymp; &frac12; &lambda;<sub>1</sub> &#8214;&eta;&#8214;<sup>2</sup> along its eigenvector.
The least perturbation is the smallest OSSA budget in [0, {cfg['max_epsilon']:g}] that changes the prediction
(binary search, tolerance {cfg['tol']:g}); {_pct(lp['fooled_within_max_epsilon'])} of the inputs are fooled within that range.
The paper's Figure 3: inputs with a larger &lambda;<sub>1</sub> need a smaller perturbation (a negative correlation).</p>
<div class="plots">{_figure(pngs, 'eigenvalues.png', _PLOTS['eigenvalues.png'][1])}
{_figure(pngs, 'scatter.png', _PLOTS['scatter.png'][1])}</div>"""


def _html(summary: dict, pngs: dict, x: np.ndarray, names) -> str:
    m, d, run = summary["model"], summary["data"], summary["run"]
    esc = html.escape
    model_name = esc(Path(m["path"]).name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>fisher-ref audit: {model_name}</title><style>{_CSS}</style></head>
<body><main>
<h1>Fisher information audit of <code>{model_name}</code></h1>
<p class="lead">{count(summary['n_inputs'], 'input')} from {esc(str(d.get('source')))}; {m['n_classes']} classes;
input {esc(str(tuple(m['input_shape'])))} ({esc(m['dtype'])}); ONNX Runtime {esc(', '.join(m['providers']))}.
Generated by fisher-ref {esc(run['fisher_ref_version'])} on {esc(run['finished'])}.</p>
<div class="cards">{_cards(summary)}</div>
{_how_to_read(summary, x, panels=any(name in pngs for _, name, _, _ in _GRIDS))}
{_fooling_section(summary, pngs)}
{_spectrum_section(summary, pngs)}

<h2>Most vulnerable inputs</h2>
{_vulnerable(summary, pngs, names)}

<h2>Configuration</h2>
{_configuration(summary)}

<h2>Files in this folder</h2>
<p>Every file this audit wrote, linked by its relative name: the links work wherever the folder is opened or
copied.</p>
{_files_table(summary, list(pngs))}
<div id="image-check" data-total="" data-broken="">image check not run</div>
</main>
{_SCRIPT}
</body></html>
"""
