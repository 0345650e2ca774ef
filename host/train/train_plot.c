// RUN/loss_stage<N>.svg: the loss curve of a stage, and one panel per term of a loss of several
// terms (stage 2's mse, cos and infonce differ by orders of magnitude: on one scale the small ones
// are flat lines at zero). Each panel has its own y scale, value ticks with grid lines and titles.
#include <math.h>
#include <string.h>

#include "cJSON.h"
#include "common.h"
#include "train_log.h"

#define PLOT_WIDTH 760
#define PANEL_HEIGHT 220      // one curve's panel, its tick labels included
#define PLOT_TITLE_HEIGHT 34  // the title line above the first panel
#define MARGIN_LEFT 78        // y tick labels and the rotated y title
#define MARGIN_RIGHT 24
#define PANEL_TOP_GAP 16      // between a panel's frame and the one above
#define PANEL_BOTTOM 44       // x tick labels and the x title below a frame
#define TARGET_TICKS 5        // about this many ticks per axis
#define TICK_LEN 4

typedef struct {
  const char *name;   // the metrics.jsonl key
  const char *title;  // the y-axis title
  const char *color;
  double *x, *y;
  int n, cap;
} series;

static void series_push(series *s, double x, double y) {
  if (!isfinite(y)) return;
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 256;
    s->x = reallocCheck(s->x, (size_t)s->cap * sizeof *s->x);
    s->y = reallocCheck(s->y, (size_t)s->cap * sizeof *s->y);
  }
  s->x[s->n] = x;
  s->y[s->n] = y;
  s->n++;
}

// A "nice" tick step (1, 2 or 5 times a power of ten) giving about TARGET_TICKS ticks over span.
static double tick_step(double span) {
  const double raw = span / TARGET_TICKS;
  const double mag = pow(10, floor(log10(raw)));
  const double f = raw / mag;
  return mag * (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10);
}

// Widens [lo, hi] to whole tick steps (and a flat series to a visible range).
static double nice_range(double *lo, double *hi) {
  if (*hi - *lo <= fabs(*hi) * 1e-9 || *hi == *lo) {
    const double pad = *hi != 0 ? fabs(*hi) * 0.1 : 1;
    *lo -= pad, *hi += pad;
  }
  const double step = tick_step(*hi - *lo);
  *lo = floor(*lo / step) * step;
  *hi = ceil(*hi / step) * step;
  return step;
}

typedef struct {
  double x0, y0, w, h;        // the frame, in SVG units
  double xmin, xmax, ymin, ymax;
} frame;

static double px(const frame *f, double x) { return f->x0 + f->w * (x - f->xmin) / (f->xmax - f->xmin); }
static double py(const frame *f, double y) { return f->y0 + f->h * (1 - (y - f->ymin) / (f->ymax - f->ymin)); }

// Tick values: %g keeps them short (1e-05, 0.25, 1200).
static void emit_axes(sn_strbuf *svg, const frame *f, double xstep, double ystep, const char *ytitle,
                      const char *color) {
  sn_strbuf_printf(svg, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#666\"/>\n",
                   f->x0, f->y0, f->w, f->h);
  // Ticks at whole multiples of the step; the half-step slack absorbs rounding of the range.
  for (double v = f->ymin; v <= f->ymax + ystep * 0.5; v += ystep) {
    const double y = py(f, v);
    sn_strbuf_printf(svg, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", f->x0,
                     y, f->x0 + f->w, y);
    sn_strbuf_printf(svg, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#666\"/>\n",
                     f->x0 - TICK_LEN, y, f->x0, y);
    sn_strbuf_printf(svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n", f->x0 - TICK_LEN - 2,
                     y + 4, fabs(v) < ystep * 1e-6 ? 0.0 : v);
  }
  for (double v = f->xmin; v <= f->xmax + xstep * 0.5; v += xstep) {
    const double x = px(f, v);
    sn_strbuf_printf(svg, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", x,
                     f->y0, x, f->y0 + f->h);
    sn_strbuf_printf(svg, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#666\"/>\n", x,
                     f->y0 + f->h, x, f->y0 + f->h + TICK_LEN);
    sn_strbuf_printf(svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.6g</text>\n", x,
                     f->y0 + f->h + TICK_LEN + 13, v);
  }
  sn_strbuf_printf(svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n", f->x0 + f->w / 2,
                   f->y0 + f->h + PANEL_BOTTOM - 8);
  const double ty = f->y0 + f->h / 2, tx = 16;
  sn_strbuf_printf(svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"%s\" transform=\"rotate(-90 %.1f %.1f)\">%s</text>\n",
                   tx, ty, color, tx, ty, ytitle);
}

static void emit_panel(sn_strbuf *svg, const series *s, double xmin, double xmax, double xstep, double top) {
  frame f = {.x0 = MARGIN_LEFT, .y0 = top, .w = PLOT_WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
             .h = PANEL_HEIGHT - PANEL_TOP_GAP - PANEL_BOTTOM, .xmin = xmin, .xmax = xmax};
  f.ymin = INFINITY, f.ymax = -INFINITY;
  for (int k = 0; k < s->n; k++) f.ymin = fmin(f.ymin, s->y[k]), f.ymax = fmax(f.ymax, s->y[k]);
  const double ystep = nice_range(&f.ymin, &f.ymax);
  emit_axes(svg, &f, xstep, ystep, s->title, s->color);
  sn_strbuf_printf(svg, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", s->color);
  for (int k = 0; k < s->n; k++) sn_strbuf_printf(svg, "%.1f,%.1f ", px(&f, s->x[k]), py(&f, s->y[k]));
  sn_strbuf_printf(svg, "\"/>\n");
  // The last value, at the panel's top right: what the curve ended at, readable without the ticks.
  sn_strbuf_printf(svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"%s\">%s %.4g at step %.0f</text>\n",
                   f.x0 + f.w - 6, f.y0 + 16, s->color, s->name, s->y[s->n - 1], s->x[s->n - 1]);
}

int sn_plot_loss_svg(const char *run_dir, int stage) {
  char path[1100];
  snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
  char *text = sn_read_file(path, NULL);
  if (!text) return -1;
  series lines[] = {{.name = "loss", .title = "loss (sum of the terms)", .color = "#1f77b4"},
                    {.name = "mse", .title = "mse term (alpha x MSE)", .color = "#ff7f0e"},
                    {.name = "cos", .title = "cos term (beta x (1 - cos))", .color = "#2ca02c"},
                    {.name = "infonce", .title = "infonce term", .color = "#d62728"}};
  const int nlines = (int)SN_ARRAY_LEN(lines);
  for (char *line = text, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next) *next++ = '\0';
    cJSON *rec = cJSON_Parse(line);
    if (!rec) continue;
    if ((int)cJSON_GetNumberValue(cJSON_GetObjectItem(rec, "stage")) == stage) {
      double step = cJSON_GetNumberValue(cJSON_GetObjectItem(rec, "step"));
      for (int i = 0; i < nlines; i++) {
        cJSON *v = cJSON_GetObjectItem(rec, lines[i].name);
        if (cJSON_IsNumber(v)) series_push(&lines[i], step, v->valuedouble);
      }
    }
    cJSON_Delete(rec);
  }
  free(text);
  int rc = -1;
  if (lines[0].n > 0) {
    if (lines[0].n > 0 && lines[1].n + lines[2].n + lines[3].n == 0) lines[0].title = "loss";
    double xmin = INFINITY, xmax = -INFINITY;
    int panels = 0;
    for (int i = 0; i < nlines; i++) {
      if (lines[i].n) panels++;
      for (int k = 0; k < lines[i].n; k++) xmin = fmin(xmin, lines[i].x[k]), xmax = fmax(xmax, lines[i].x[k]);
    }
    if (xmax == xmin) xmax = xmin + 1;
    const double xstep = nice_range(&xmin, &xmax);
    sn_strbuf svg = {0};
    sn_strbuf_printf(&svg,
                     "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n"
                     "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
                     "<text x=\"%d\" y=\"22\" font-size=\"15\">stage %d: training loss%s</text>\n",
                     PLOT_WIDTH, PLOT_TITLE_HEIGHT + panels * PANEL_HEIGHT, MARGIN_LEFT, stage,
                     panels > 1 ? " and its terms, each on its own scale" : "");
    double top = PLOT_TITLE_HEIGHT;
    for (int i = 0; i < nlines; i++) {
      if (!lines[i].n) continue;
      emit_panel(&svg, &lines[i], xmin, xmax, xstep, top + PANEL_TOP_GAP);
      top += PANEL_HEIGHT;
    }
    sn_strbuf_printf(&svg, "</svg>\n");
    char out[1100];
    snprintf(out, sizeof out, "%s/loss_stage%d.svg", run_dir, stage);
    rc = sn_write_file_atomic(out, svg.s, svg.len);
    free(svg.s);
  }
  for (int i = 0; i < nlines; i++) {
    free(lines[i].x);
    free(lines[i].y);
  }
  return rc;
}
