"""The scaling study's plot, as SVG (the look of sn_train's loss plots, host/train/train_plot.c):
left, the held-out contrastive loss against non-embedding parameters N (log x) with the fitted
L(N) = A N^-alpha + L_inf of each init; right, nDCG@10 against N with its log-linear fit."""
import math

import numpy as np

import scaling_fit

COLORS = {"random": "#1f77b4", "pretrained": "#d62728"}
PANEL_W, PANEL_H = 420, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 76, 20, 56, 52
LEGEND_Y = 44        # the legend's row, between the title and the plot
LEGEND_STEP = 120    # horizontal space of one legend entry
CURVE_POINTS = 64
Y_TICKS = 5


def _panel(svg, x_off, title, ylabel, cells, inits, key, curve_of):
    ns = [c["params_non_embedding"] for c in cells]
    ys = [c[key] for c in cells]
    lx0, lx1 = math.floor(math.log10(min(ns))), math.ceil(math.log10(max(ns)))
    if lx1 == lx0:
        lx1 += 1
    # fits drawn over the measured sizes only: extrapolated, a law of negative exponent would set
    # the scale and flatten the points
    curves = {i: curve_of(i, math.log10(min(ns)), math.log10(max(ns))) for i in inits}
    all_y = ys + [y for c in curves.values() if c for _, y in c]
    y0, y1 = min(all_y), max(all_y)
    pad = 0.05 * (y1 - y0 or abs(y1) or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    px0, px1 = x_off + MARGIN_L, x_off + PANEL_W - MARGIN_R
    py0, py1 = MARGIN_T, PANEL_H - MARGIN_B

    def sx(n):
        return px0 + (math.log10(n) - lx0) / (lx1 - lx0) * (px1 - px0)

    def sy(y):
        return py1 - (y - y0) / (y1 - y0) * (py1 - py0)

    svg.append(f'<text x="{px0:.1f}" y="24" font-size="14">{title}</text>')
    for e in range(lx0, lx1 + 1):
        x = sx(10 ** e)
        svg.append(f'<line x1="{x:.1f}" y1="{py0}" x2="{x:.1f}" y2="{py1}" stroke="#e4e4e4"/>')
        svg.append(f'<text x="{x:.1f}" y="{py1 + 16}" text-anchor="middle">1e{e}</text>')
    for k in range(Y_TICKS + 1):
        y = y0 + (y1 - y0) * k / Y_TICKS
        svg.append(f'<line x1="{px0}" y1="{sy(y):.1f}" x2="{px1}" y2="{sy(y):.1f}" stroke="#e4e4e4"/>')
        svg.append(f'<text x="{px0 - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    svg.append(f'<rect x="{px0}" y="{py0}" width="{px1 - px0}" height="{py1 - py0}" fill="none" stroke="#666"/>')
    svg.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{PANEL_H - 14}" text-anchor="middle">'
               'non-embedding parameters N (log scale)</text>')
    svg.append(f'<text transform="translate({x_off + 14},{(py0 + py1) / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{ylabel}</text>')
    for j, init in enumerate(inits):
        color = COLORS.get(init, "#333")
        if curves[init]:
            pts = " ".join(f"{sx(n):.1f},{sy(y):.1f}" for n, y in curves[init])
            svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="5,3" '
                       f'points="{pts}"/>')
        for c in cells:
            if c["init"] == init:
                svg.append(f'<circle cx="{sx(c["params_non_embedding"]):.1f}" cy="{sy(c[key]):.1f}" r="4" '
                           f'fill="{color}"/>')
        lx = px0 + LEGEND_STEP * j
        svg.append(f'<circle cx="{lx + 4}" cy="{LEGEND_Y - 4}" r="4" fill="{color}"/>')
        svg.append(f'<text x="{lx + 12}" y="{LEGEND_Y}">{init} init</text>')
    lx = px0 + LEGEND_STEP * len(inits)
    svg.append(f'<line x1="{lx}" y1="{LEGEND_Y - 4}" x2="{lx + 20}" y2="{LEGEND_Y - 4}" stroke="#333" '
               'stroke-dasharray="5,3"/>')
    svg.append(f'<text x="{lx + 26}" y="{LEGEND_Y}">fit</text>')


def loss_vs_size_svg(cells, fit, inits):
    if not cells:
        return ('<svg xmlns="http://www.w3.org/2000/svg" width="300" height="40"><text x="10" y="24">'
                'no finished cells</text></svg>\n')

    def sampled(lx0, lx1):
        return np.logspace(lx0, lx1, CURVE_POINTS)

    def loss_curve(init, lx0, lx1):
        f = fit.get(init, {}).get("loss")
        if not f:
            return None
        n = sampled(lx0, lx1)
        return list(zip(n, scaling_fit.loss_law(n, f["A"], f["alpha"], f["L_inf"])))

    def ndcg_curve(init, lx0, lx1):
        f = fit.get(init, {}).get("ndcg@10")
        if not f:
            return None
        n = sampled(lx0, lx1)
        return list(zip(n, f["intercept"] + f["slope_per_decade"] * np.log10(n)))

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * PANEL_W}" height="{PANEL_H}" '
           'font-family="sans-serif" font-size="12">', '<rect width="100%" height="100%" fill="white"/>']
    _panel(svg, 0, "held-out contrastive loss vs size", "InfoNCE vs the test corpus", cells, inits,
           "contrastive_loss", loss_curve)
    _panel(svg, PANEL_W, "nDCG@10 vs size", "nDCG@10", cells, inits, "ndcg@10", ndcg_curve)
    svg.append("</svg>")
    return "\n".join(svg) + "\n"
